"""verify_signature: known answers (openssl), rotation, hex case, malformed headers."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fin_relay.webhook_ingest.verify import parse_signature, sign, verify_signature

BODY = b'{"event_name":"fin_status_updated","conversation_id":"123456","status":"complete"}'
SECRET = "whsec-fin-relay-known-answer"
# Computed independently: printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"
KNOWN = "sha256=b95446b2960cd51d8e0f2f94402f0b8ec5a41856684077199da767daabe3147f"


def _openssl_hmac(body: bytes, secret: str) -> str:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret],
        input=body,
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout.decode()
    return "sha256=" + out.strip().rsplit(" ", 1)[-1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_known_answer_matches_openssl() -> None:
    expected = _openssl_hmac(BODY, SECRET)
    assert sign(BODY, SECRET.encode()) == expected
    assert verify_signature(BODY, expected, [SECRET.encode()])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_non_ascii_secret_is_keyed_by_its_utf8_bytes() -> None:
    secret = "sécret-ü"
    expected = _openssl_hmac(BODY, secret)  # openssl receives the UTF-8 bytes of argv
    assert verify_signature(BODY, expected, [secret.encode("utf-8")])
    assert not verify_signature(BODY, expected, [secret.encode("latin-1")])


def test_known_answer_constant() -> None:
    assert sign(BODY, SECRET.encode()) == KNOWN
    assert verify_signature(BODY, KNOWN, [SECRET.encode()])


def test_rotation_accepts_every_secret() -> None:
    old, new = b"old-secret", b"new-secret"
    for secret in (old, new):
        assert verify_signature(BODY, sign(BODY, secret), [old, new])
    assert not verify_signature(BODY, sign(BODY, b"other"), [old, new])
    assert not verify_signature(BODY, sign(BODY, old), [new])


def test_hex_and_prefix_are_case_insensitive_and_whitespace_trimmed() -> None:
    header = sign(BODY, b"k")
    assert verify_signature(BODY, header.upper(), [b"k"])
    assert verify_signature(BODY, "SHA256=" + header[7:], [b"k"])
    assert verify_signature(BODY, f"  {header} ", [b"k"])
    assert verify_signature(BODY, header.encode(), [b"k"])


def test_body_must_be_the_signed_bytes() -> None:
    header = sign(BODY, b"k")
    assert not verify_signature(BODY + b" ", header, [b"k"])
    assert not verify_signature(BODY, header, [])


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256",
        "sha1=" + "0" * 40,
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        "sha256=" + "g" * 64,
        "sha256=" + "é" * 64,
        "sha256 =" + "0" * 64,
        "sha256=" + "0" * 62 + "\x00\x00",
        "x" * 10_000_000,
        b"\xff" * 71,
        b"sha256=" + b"\xc3" * 64,
        "sha256=21ff2e149e0fdcac6f947740f6177f6434bda921",  # the docs' 40-hex example
    ],
)
def test_malformed_headers_are_false_never_raise(header: str | bytes | None) -> None:
    assert parse_signature(header) is None
    assert verify_signature(BODY, header, [b"k"]) is False


@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(st.none(), st.text(max_size=200), st.binary(max_size=200)),
    body=st.binary(max_size=300),
)
def test_any_header_never_raises(header: str | bytes | None, body: bytes) -> None:
    digest = parse_signature(header)
    valid = digest is not None and any(
        hmac.compare_digest(digest, hmac.new(k, body, hashlib.sha256).digest())
        for k in (b"k", b"k2")
    )
    assert verify_signature(body, header, [b"k", b"k2"]) is valid
