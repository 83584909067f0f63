"""Webhook signature schemes, checked against the Standard Webhooks reference vector."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from orchestrator.signatures import (
    SecretFormatError,
    generate_secret,
    plain_keys,
    sign_github,
    sign_standard,
    split_secrets,
    standard_headers,
    standard_keys,
    verify_bearer,
    verify_github,
    verify_standard,
)

# The reference libraries' test vector (standard-webhooks, libraries/*/tests):
# this secret, id, timestamp and payload sign to exactly this value.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000.0


def check(
    keys: tuple[bytes, ...],
    headers: dict[str, str],
    body: bytes,
    *,
    now: float = NOW,
    tolerance_s: float = 300,
) -> str | None:
    return verify_standard(
        keys,
        msg_id=headers.get("webhook-id"),
        timestamp=headers.get("webhook-timestamp"),
        signature=headers.get("webhook-signature"),
        body=body,
        now=now,
        tolerance_s=tolerance_s,
    )


def test_sign_standard_matches_the_reference_vector() -> None:
    assert sign_standard(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD) == (
        VECTOR_SIGNATURE
    )
    # The reference libraries accept the key without its prefix too.
    assert standard_keys(VECTOR_SECRET) == standard_keys(VECTOR_SECRET.removeprefix("whsec_"))


def test_the_reference_vector_verifies_at_its_own_time_and_not_ten_minutes_later() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    keys = standard_keys(VECTOR_SECRET)
    assert check(keys, headers, VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP) is None
    late = check(keys, headers, VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP + 600)
    assert late is not None and "600 s old" in late


def test_the_reference_invalid_signature_is_refused() -> None:
    # From the reference tests: the vector's signature with its last character changed.
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
    }
    reason = check(standard_keys(VECTOR_SECRET), headers, VECTOR_PAYLOAD, now=VECTOR_TIMESTAMP)
    assert reason == "no signature in webhook-signature matches this body, id and timestamp"


@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("webhook-id", "missing webhook-id header"),
        ("webhook-timestamp", "missing webhook-timestamp header"),
        ("webhook-signature", "missing webhook-signature header"),
    ],
)
def test_each_missing_header_is_named(missing: str, reason: str) -> None:
    headers = standard_headers(VECTOR_SECRET, "msg_1", int(NOW), b"{}")
    del headers[missing]
    assert check(standard_keys(VECTOR_SECRET), headers, b"{}") == reason


def test_timestamp_tolerance_is_enforced_both_ways() -> None:
    keys = standard_keys(VECTOR_SECRET)
    for offset, ok in [(-299, True), (299, True), (-301, False), (301, False), (0, True)]:
        headers = standard_headers(VECTOR_SECRET, "msg_t", int(NOW) + offset, b"{}")
        reason = check(keys, headers, b"{}")
        assert (reason is None) is ok, (offset, reason)
        if offset == 301:
            assert reason is not None and "in the future" in reason
    bad = {**standard_headers(VECTOR_SECRET, "m", int(NOW), b"{}"), "webhook-timestamp": "soon"}
    assert check(keys, bad, b"{}") == "webhook-timestamp is not an integer unix time in seconds"


def test_any_one_valid_entry_among_several_signatures_is_enough() -> None:
    body = b'{"a": 1}'
    good = sign_standard(VECTOR_SECRET, "msg_r", int(NOW), body)
    headers = {
        "webhook-id": "msg_r",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": " ".join(
            [
                "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
                "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5Bdq==",
                good,
                "garbage",
            ]
        ),
    }
    assert check(standard_keys(VECTOR_SECRET), headers, body) is None
    headers["webhook-signature"] = "v1a,abc v2,def"
    assert check(standard_keys(VECTOR_SECRET), headers, body) == (
        "webhook-signature has no 'v1,<base64>' entry"
    )


def test_several_configured_secrets_each_verify() -> None:
    old = "whsec_" + base64.b64encode(b"old-key-0123456789abcdef").decode()
    new = "whsec_" + base64.b64encode(b"new-key-0123456789abcdef").decode()
    other = "whsec_" + base64.b64encode(b"someone-else-0123456789").decode()
    keys = standard_keys(f"{old}, {new}")
    assert len(keys) == 2
    for secret in (old, new):
        assert check(keys, standard_headers(secret, "m", int(NOW), b"[]"), b"[]") is None
    assert check(keys, standard_headers(other, "m", int(NOW), b"[]"), b"[]") is not None


def test_body_id_and_timestamp_are_all_signed() -> None:
    keys = standard_keys(VECTOR_SECRET)
    headers = standard_headers(VECTOR_SECRET, "msg_s", int(NOW), b'{"x":1}')
    assert check(keys, headers, b'{"x":1}') is None
    assert check(keys, headers, b'{"x": 1}') is not None  # same JSON, other bytes
    assert check(keys, {**headers, "webhook-id": "msg_t"}, b'{"x":1}') is not None
    moved = {**headers, "webhook-timestamp": str(int(NOW) + 1)}
    assert check(keys, moved, b'{"x":1}') is not None


def test_reasons_never_contain_the_secret_or_the_expected_signature() -> None:
    keys = standard_keys(VECTOR_SECRET)
    headers = standard_headers(VECTOR_SECRET, "msg_x", int(NOW), b"{}")
    expected = headers["webhook-signature"].removeprefix("v1,")
    reason = check(keys, headers, b"{ }")
    assert reason is not None
    for leaked in (expected, VECTOR_SECRET, VECTOR_SECRET.removeprefix("whsec_")):
        assert leaked not in reason


def test_malformed_secrets_are_named_by_position_only() -> None:
    with pytest.raises(SecretFormatError) as err:
        standard_keys("whsec_AAAA whsec_not*base64!")
    assert "#2" in str(err.value) and "not*base64" not in str(err.value)
    with pytest.raises(SecretFormatError):
        standard_keys("  ,  ")
    assert split_secrets(" a, b  c,,") == ["a", "b", "c"]


def test_github_signature() -> None:
    body = b'{"action": "opened"}'
    header = sign_github("gh-secret", body)
    # GitHub's documented form: sha256= and the hex HMAC of the raw body.
    digest = hmac.new(b"gh-secret", body, hashlib.sha256).hexdigest()
    assert header == f"sha256={digest}"
    keys = plain_keys("gh-old gh-secret")
    assert verify_github(keys, signature=header, body=body) is None
    assert (
        verify_github(keys, signature=header.upper().replace("SHA256", "sha256"), body=body) is None
    )
    assert verify_github(keys, signature=header, body=body + b" ") == (
        "X-Hub-Signature-256 does not match this body"
    )
    assert verify_github(keys, signature=None, body=body) == "missing X-Hub-Signature-256 header"
    assert verify_github(keys, signature="sha1=abc", body=body) == (
        "X-Hub-Signature-256 is not 'sha256=<hex digest>'"
    )
    wrong = sign_github("other", body)
    assert verify_github(keys, signature=wrong, body=body) is not None


def test_bearer_token() -> None:
    keys = plain_keys("tok-new,tok-old")
    assert verify_bearer(keys, authorization="Bearer tok-old") is None
    assert verify_bearer(keys, authorization="bearer tok-new") is None
    assert verify_bearer(keys, authorization=None) == "missing Authorization header"
    assert verify_bearer(keys, authorization="Basic dXNlcjpwYXNz") == (
        "Authorization is not 'Bearer <token>'"
    )
    reason = verify_bearer(keys, authorization="Bearer tok-ol")
    assert reason == "bearer token is not valid for this hook"
    assert "tok-new" not in reason and "tok-old" not in reason


def test_generated_secrets_are_usable_and_distinct() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second and first.startswith("whsec_")
    headers = standard_headers(first, "msg_g", int(NOW), b"{}")
    assert check(standard_keys(first), headers, b"{}") is None
    assert check(standard_keys(second), headers, b"{}") is not None
    token = generate_secret("bearer")
    assert verify_bearer(plain_keys(token), authorization=f"Bearer {token}") is None
