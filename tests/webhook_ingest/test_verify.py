"""verify_signature and Verifier: known answers (openssl), rotation, hex case, optional prefix,
the two key derivations (UTF-8 bytes, hex-decoded), every key tried, malformed headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fin_relay.contract.errors import ConfigurationError
from fin_relay.contract.settings import IngestSettings, load
from fin_relay.webhook_ingest import verify
from fin_relay.webhook_ingest.verify import (
    Verifier,
    derive_keys,
    hex_key,
    parse_signature,
    sign,
    verify_signature,
)

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
        "0" * 63,  # bare digits: exactly 64
        "0" * 65,
        "g" * 64,
        "sha256:" + "0" * 64,
        "sha512=" + "0" * 64,
        "0" * 62 + " 0",
        "sha256=sha256=" + "0" * 64,
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


# --- optional prefix ------------------------------------------------------------------------


def test_prefix_is_optional() -> None:
    header = sign(BODY, b"k")
    assert header.startswith("sha256=")  # sign() keeps producing the prefixed form
    bare = header[len("sha256=") :]
    assert parse_signature(bare) == parse_signature(header) == bytes.fromhex(bare)
    for value in (bare, bare.upper(), f" {bare}\t", bare.encode()):
        assert verify_signature(BODY, value, [b"k"]), value
        assert Verifier([b"k"])(BODY, value), value
    assert not verify_signature(BODY, bare, [b"other"])
    assert not verify_signature(BODY + b"x", bare, [b"k"])


# --- key derivations ------------------------------------------------------------------------

HEX_SECRET = "4f2a9c0e71b3d5a8"  # what a hex-looking signing secret looks like
HEX_KEY = bytes.fromhex(HEX_SECRET)


def test_hex_key_only_for_even_length_hex() -> None:
    assert hex_key(HEX_SECRET.encode()) == HEX_KEY
    assert hex_key(HEX_SECRET.upper().encode()) == HEX_KEY
    for not_hex in (b"", b"abc", b"ab cd", b"0x00", b"zz", "é0".encode(), b"ab\n", b" abcd"):
        assert hex_key(not_hex) is None, not_hex


def test_derive_keys_per_encoding() -> None:
    text = b"plain-secret"
    assert derive_keys([text]) == (("utf8", text),)
    assert derive_keys([HEX_SECRET.encode()]) == (
        ("utf8", HEX_SECRET.encode()),
        ("hex", HEX_KEY),
    )
    assert derive_keys([HEX_SECRET.encode(), text], "utf8") == (
        ("utf8", HEX_SECRET.encode()),
        ("utf8", text),
    )
    assert derive_keys([HEX_SECRET.encode()], "hex") == (("hex", HEX_KEY),)
    with pytest.raises(ValueError, match="secret 2 is not") as info:
        derive_keys([HEX_SECRET.encode(), text], "hex")
    assert "plain-secret" not in str(info.value)
    with pytest.raises(ValueError):
        Verifier([text], "hex")
    with pytest.raises(ValueError):
        derive_keys([text], "latin1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "auto", "utf8", "hex_"),
    [
        (HEX_SECRET.encode(), True, True, False),  # Fin keyed with the secret's UTF-8 bytes
        (HEX_KEY, True, False, True),  # Fin keyed with the hex-decoded secret
        (b"something-else", False, False, False),
    ],
)
def test_both_derivations_are_accepted_in_auto_and_pinning_refuses_the_other(
    key: bytes, auto: bool, utf8: bool, hex_: bool
) -> None:
    header = sign(BODY, key)
    secrets = [HEX_SECRET.encode()]
    for encoding, expected in (("auto", auto), ("utf8", utf8), ("hex", hex_)):
        assert verify_signature(BODY, header, secrets, encoding=encoding) is expected  # type: ignore[arg-type]
        assert Verifier(secrets, encoding)(BODY, header) is expected  # type: ignore[arg-type]


def test_rotation_with_mixed_derivations() -> None:
    secrets = [b"old-plain-secret", HEX_SECRET.encode()]
    verifier = Verifier(secrets)
    assert verifier.derivations == ("utf8", "utf8", "hex")
    for key in (b"old-plain-secret", HEX_SECRET.encode(), HEX_KEY):
        assert verifier(BODY, sign(BODY, key)) and verify_signature(BODY, sign(BODY, key), secrets)
    assert not verifier(BODY, sign(BODY, bytes.fromhex("00" * 8)))


# --- every key tried, constant-time comparison -----------------------------------------------


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``compare_digest`` call the verifier makes."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(verify, "_compare_digest", counting)
    return calls


def test_every_key_is_compared_whichever_matches(comparisons: list[tuple[bytes, bytes]]) -> None:
    secrets = [b"first-secret", HEX_SECRET.encode(), b"third-secret"]
    verifier = Verifier(secrets)
    assert len(verifier.derivations) == 4
    for key, ok in (
        (b"first-secret", True),  # the first key matches: the other three are still compared
        (HEX_KEY, True),
        (b"third-secret", True),
        (b"nobody", False),
    ):
        header = sign(BODY, key)
        comparisons.clear()
        assert verifier(BODY, header) is ok
        assert len(comparisons) == 4
        assert all(expected == parse_signature(header) for _mac, expected in comparisons)
        comparisons.clear()
        assert verify_signature(BODY, header, secrets) is ok
        assert len(comparisons) == 4
    comparisons.clear()
    assert not verifier(BODY, "sha256=zz")  # malformed: nothing to compare
    assert comparisons == []


def test_digest_comparison_is_constant_time_compare_digest() -> None:
    assert verify._compare_digest is hmac.compare_digest


# --- which derivation matched is logged once per derivation ----------------------------------


def test_matching_derivation_is_logged_once_each_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verifier = Verifier([HEX_SECRET.encode()])
    caplog.set_level(logging.INFO, logger="fin_relay.webhook_ingest")
    assert not verifier(BODY, sign(BODY, b"wrong"))
    assert caplog.records == []
    for _ in range(3):
        assert verifier(BODY, sign(BODY, HEX_SECRET.encode()))
    for _ in range(3):
        assert verifier(BODY, sign(BODY, HEX_KEY))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "webhook signatures match the signing secret's UTF-8 bytes; "
        "set FIN_RELAY_WEBHOOK_SECRET_ENCODING=utf8 to pin it",
        "webhook signatures match the signing secret's hex-decoded bytes; "
        "set FIN_RELAY_WEBHOOK_SECRET_ENCODING=hex to pin it",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    text = " ".join(messages)
    assert HEX_SECRET not in text and HEX_KEY.hex() not in text
    assert sign(BODY, HEX_KEY)[7:] not in text and sign(BODY, HEX_SECRET.encode())[7:] not in text
    caplog.clear()
    pinned = Verifier([HEX_SECRET.encode()], "hex")
    assert pinned(BODY, sign(BODY, HEX_KEY)) and pinned(BODY, sign(BODY, HEX_KEY))
    assert [r.getMessage() for r in caplog.records] == [
        "webhook signatures match the signing secret's hex-decoded bytes "
        "(FIN_RELAY_WEBHOOK_SECRET_ENCODING=hex)"
    ]


# --- the setting -----------------------------------------------------------------------------


def test_setting_defaults_to_auto_and_is_case_insensitive() -> None:
    base = {"redis_url": "redis://127.0.0.1:1/0", "fin_webhook_secrets": HEX_SECRET}
    assert load(IngestSettings, **base).fin_relay_webhook_secret_encoding == "auto"
    for value, expected in (("UTF8", "utf8"), (" hex ", "hex"), ("Auto", "auto")):
        settings_ = load(IngestSettings, **base, fin_relay_webhook_secret_encoding=value)
        assert settings_.fin_relay_webhook_secret_encoding == expected


@pytest.mark.parametrize(
    ("secrets", "encoding"),
    [
        ("not-hex-secret", "hex"),
        (f"{HEX_SECRET},not-hex-secret", "hex"),
        (HEX_SECRET + "a", "hex"),  # odd length
        (HEX_SECRET, "utf-16"),
    ],
)
def test_bad_encoding_setting_is_one_line_naming_the_variable(secrets: str, encoding: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(
            IngestSettings,
            redis_url="redis://127.0.0.1:1/0",
            fin_webhook_secrets=secrets,
            fin_relay_webhook_secret_encoding=encoding,
        )
    message = str(info.value)
    assert message.startswith("configuration error: FIN_RELAY_WEBHOOK_SECRET_ENCODING ")
    assert "\n" not in message
    assert "not-hex-secret" not in message and HEX_SECRET not in message


@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(st.none(), st.text(max_size=200), st.binary(max_size=200)),
    body=st.binary(max_size=300),
    encoding=st.sampled_from(["auto", "utf8", "hex"]),
)
def test_verifier_agrees_with_verify_signature_for_every_encoding(
    header: str | bytes | None, body: bytes, encoding: Any
) -> None:
    secrets = [b"abcd", b"00ff"]  # both hex: every encoding is valid
    keys = {"auto": [b"abcd", b"\xab\xcd", b"00ff", b"\x00\xff"],
            "utf8": [b"abcd", b"00ff"], "hex": [b"\xab\xcd", b"\x00\xff"]}[encoding]  # fmt: skip
    digest = parse_signature(header)
    valid = digest is not None and any(
        hmac.compare_digest(digest, hmac.new(k, body, hashlib.sha256).digest()) for k in keys
    )
    assert verify_signature(body, header, secrets, encoding=encoding) is valid
    assert Verifier(secrets, encoding)(body, header) is valid
    for key in keys:
        assert Verifier(secrets, encoding)(body, sign(body, key))
