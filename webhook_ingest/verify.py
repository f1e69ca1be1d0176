"""Webhook signature verification: small pure functions, no framework, no I/O.

Fin signs the raw request body with HMAC-SHA256 and sends ``X-Fin-Agent-API-Webhook-Signature:
sha256=<hex>``. Intercom's docs do not say whether the signing secret is the HMAC key as its
UTF-8 bytes or hex-decoded, and live integrations try both; so does fin-relay by default
(``encoding="auto"``): each secret yields its UTF-8 bytes and, when it is an even-length hex
string, its hex-decoded bytes. ``"utf8"`` or ``"hex"`` pins one derivation.
Every key is tried (no early exit), so a secret can be rotated without downtime and the timing
does not tell which key matched. The ``sha256=`` prefix is optional: 64 bare hex digits pass too.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from hmac import compare_digest as _compare_digest
from typing import Literal

log = logging.getLogger("fin_relay.webhook_ingest")

SIGNATURE_HEADER = "x-fin-agent-api-webhook-signature"
_PREFIX = "sha256="
_HEX_LEN = 64  # hex digits of a SHA-256 digest
_MAX_HEADER = 2 * _HEX_LEN  # longer header values are not looked at

SecretEncoding = Literal["auto", "utf8", "hex"]
#: The values of ``FIN_RELAY_WEBHOOK_SECRET_ENCODING``.
ENCODINGS: tuple[SecretEncoding, ...] = ("auto", "utf8", "hex")
UTF8: Literal["utf8"] = "utf8"
HEX: Literal["hex"] = "hex"

_HEX_SECRET = re.compile(rb"(?:[0-9A-Fa-f]{2})+")
_DESCRIBED = {
    UTF8: "the signing secret's UTF-8 bytes",
    HEX: "the signing secret's hex-decoded bytes",
}


def sign(body: bytes, secret: bytes) -> str:
    """The header value Fin would send for ``body`` signed with ``secret`` (for tests and tools):
    ``sha256=<hex>``, keyed with ``secret`` as given."""
    return _PREFIX + hmac.digest(secret, body, "sha256").hex()


def hex_key(secret: bytes) -> bytes | None:
    """``secret`` hex-decoded when it is a non-empty, even-length string of hex digits (either
    case, nothing else), else ``None``."""
    if _HEX_SECRET.fullmatch(secret) is None:
        return None
    return bytes.fromhex(secret.decode("ascii"))


def derive_keys(
    secrets: Sequence[bytes], encoding: SecretEncoding = "auto"
) -> tuple[tuple[str, bytes], ...]:
    """The HMAC keys of ``secrets`` (each the UTF-8 bytes of a configured secret) as
    ``(derivation, key)`` pairs, derivation ``"utf8"`` or ``"hex"``.

    ``auto``: the UTF-8 bytes of every secret, plus the hex-decoded bytes of every secret that is
    an even-length hex string. ``utf8``: the UTF-8 bytes only. ``hex``: the hex-decoded bytes
    only; raises ``ValueError`` (naming the secret's position, never its value) when a secret is
    not hex.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown secret encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    keys: list[tuple[str, bytes]] = []
    for position, secret in enumerate(secrets, 1):
        if encoding != HEX:
            keys.append((UTF8, secret))
        if encoding != UTF8:
            decoded = hex_key(secret)
            if decoded is not None:
                keys.append((HEX, decoded))
            elif encoding == HEX:
                raise ValueError(f"secret {position} is not an even-length hex string")
    return tuple(keys)


def parse_signature(header: str | bytes | None) -> bytes | None:
    """The 32-byte digest in a ``sha256=<64 hex>`` (or bare ``<64 hex>``) header value, or
    ``None`` when malformed.

    The prefix is matched case-insensitively, the hex digits in either case; surrounding
    whitespace is ignored. Nothing here raises on any input.
    """
    if header is None:
        return None
    if isinstance(header, bytes):
        if len(header) > _MAX_HEADER:
            return None
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(header, str) or len(header) > _MAX_HEADER:
        return None
    value = header.strip()
    if len(value) == len(_PREFIX) + _HEX_LEN:
        if value[: len(_PREFIX)].lower() != _PREFIX:
            return None
        value = value[len(_PREFIX) :]
    elif len(value) != _HEX_LEN:
        return None
    try:
        digest = bytes.fromhex(value)
    except ValueError:  # non-hex (fromhex accepts either case)
        return None
    # fromhex skips whitespace between pairs; 64 characters giving 32 bytes means there was none.
    return digest if len(digest) == _HEX_LEN // 2 else None


def verify_signature(
    body: bytes,
    header: str | bytes | None,
    secrets: Sequence[bytes],
    *,
    encoding: SecretEncoding = "auto",
) -> bool:
    """True when ``header`` is a valid HMAC-SHA256 of ``body`` under a key of ``secrets``
    (:func:`derive_keys` with ``encoding``).

    Constant-time comparison; every key is tried (no early exit that would reveal which one
    matched); a malformed header is simply ``False``.
    """
    expected = parse_signature(header)
    if expected is None:
        return False
    ok = False
    for _derivation, key in derive_keys(secrets, encoding):
        ok |= _compare_digest(hmac.digest(key, body, "sha256"), expected)
    return ok


class Verifier:
    """:func:`verify_signature` for a fixed set of secrets, with each key's HMAC set up once.

    Keying HMAC-SHA256 hashes the padded key (two SHA-256 blocks); copying a keyed state instead
    saves about a third of the cost on a 1 KiB body. Same semantics: constant-time comparison,
    every key tried, malformed header = ``False``. The first time a derivation matches, it is
    logged once at INFO (which derivation, never the secret or a digest), so an operator can pin
    ``FIN_RELAY_WEBHOOK_SECRET_ENCODING``.
    """

    __slots__ = ("_derivations", "_encoding", "_keyed", "_unlogged")

    def __init__(self, secrets: Sequence[bytes], encoding: SecretEncoding = "auto") -> None:
        keys = derive_keys(secrets, encoding)
        self._encoding = encoding
        self._derivations = tuple(derivation for derivation, _key in keys)
        self._keyed = tuple(hmac.new(key, digestmod="sha256") for _derivation, key in keys)
        # per key: its derivation has not been logged yet (a list index on the hot path)
        self._unlogged = [True] * len(keys)

    @property
    def derivations(self) -> tuple[str, ...]:
        """The derivation of each key, in the order they are tried."""
        return self._derivations

    def __call__(self, body: bytes, header: str | bytes | None) -> bool:
        expected = parse_signature(header)
        if expected is None:
            return False
        matched = -1
        for index, keyed in enumerate(self._keyed):  # every key: no early exit
            mac = keyed.copy()
            mac.update(body)
            if _compare_digest(mac.digest(), expected):
                matched = index
        if matched < 0:
            return False
        if self._unlogged[matched]:
            self._log_match(self._derivations[matched])
        return True

    def _log_match(self, derivation: str) -> None:
        for index, other in enumerate(self._derivations):
            if other == derivation:
                self._unlogged[index] = False
        if self._encoding == "auto":
            log.info(
                "webhook signatures match %s; set FIN_RELAY_WEBHOOK_SECRET_ENCODING=%s to pin it",
                _DESCRIBED[derivation],
                derivation,
            )
        else:
            log.info(
                "webhook signatures match %s (FIN_RELAY_WEBHOOK_SECRET_ENCODING=%s)",
                _DESCRIBED[derivation],
                derivation,
            )
