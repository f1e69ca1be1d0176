"""Webhook signature verification: a small pure function, no framework, no I/O.

Fin signs the raw request body with HMAC-SHA256 and sends ``X-Fin-Agent-API-Webhook-Signature:
sha256=<hex>`` (fin-agent-api.md §7). The docs do not say how the signing secret becomes the
HMAC key; fin-relay uses the secret's UTF-8 bytes (what every third-party verifier does).
Every configured secret is tried, so a secret can be rotated without downtime.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

SIGNATURE_HEADER = "x-fin-agent-api-webhook-signature"
_PREFIX = "sha256="
_HEX_LEN = 64  # hex digits of a SHA-256 digest


def sign(body: bytes, secret: bytes) -> str:
    """The header value Fin would send for ``body`` signed with ``secret`` (for tests and tools)."""
    return _PREFIX + hmac.digest(secret, body, "sha256").hex()


def parse_signature(header: str | bytes | None) -> bytes | None:
    """The 32-byte digest in a ``sha256=<64 hex>`` header value, or ``None`` when malformed.

    The prefix is matched case-insensitively, the hex digits in either case; surrounding
    whitespace is ignored. Nothing here raises on any input.
    """
    if header is None:
        return None
    if isinstance(header, bytes):
        if len(header) > 2 * _HEX_LEN:
            return None
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(header, str) or len(header) > 2 * _HEX_LEN:
        return None
    value = header.strip()
    if len(value) != len(_PREFIX) + _HEX_LEN or value[: len(_PREFIX)].lower() != _PREFIX:
        return None
    try:
        digest = bytes.fromhex(value[len(_PREFIX) :])
    except ValueError:  # non-hex (fromhex accepts either case)
        return None
    # fromhex skips whitespace between pairs; 64 characters giving 32 bytes means there was none.
    return digest if len(digest) == _HEX_LEN // 2 else None


def verify_signature(body: bytes, header: str | bytes | None, secrets: Sequence[bytes]) -> bool:
    """True when ``header`` is a valid ``sha256=`` HMAC of ``body`` under one of ``secrets``.

    Constant-time comparison; every secret is tried (no early exit that would reveal which one
    matched); a malformed header is simply ``False``.
    """
    expected = parse_signature(header)
    if expected is None:
        return False
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(hmac.digest(secret, body, "sha256"), expected)
    return ok


class Verifier:
    """:func:`verify_signature` for a fixed set of secrets, with each key's HMAC set up once.

    Keying HMAC-SHA256 hashes the padded key (two SHA-256 blocks); copying a keyed state instead
    saves about a third of the cost on a 1 KiB body. Same semantics: constant-time comparison,
    every secret tried, malformed header = ``False``.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self._keyed = tuple(hmac.new(secret, digestmod="sha256") for secret in secrets)

    def __call__(self, body: bytes, header: str | bytes | None) -> bool:
        expected = parse_signature(header)
        if expected is None:
            return False
        ok = False
        for keyed in self._keyed:
            mac = keyed.copy()
            mac.update(body)
            ok |= hmac.compare_digest(mac.digest(), expected)
        return ok
