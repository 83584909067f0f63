"""Webhook authentication: pure functions, no I/O.

Three schemes, chosen per hook by ``WebhookTrigger.auth``:

- ``standard`` — Standard Webhooks (https://www.standardwebhooks.com):
  ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``,
  a space-separated list of ``v1,<base64 HMAC-SHA256>`` entries over
  ``f"{id}.{timestamp}.{body}"`` (the raw body bytes). Secrets are
  ``whsec_<base64 key>``; the key is the decoded part.
- ``github`` — ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
- ``bearer`` — ``Authorization: Bearer <secret>``.

Rotation works on both sides: a sender may put several signatures in
``webhook-signature`` (one valid is enough), and the receiver may configure
several secrets at once, separated by spaces or commas (any one may match).

Every verifier returns ``None`` when the request is authentic, else a reason
for the 401 answer. Reasons name the problem, never a secret or the expected
signature. Comparisons are constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from functools import lru_cache

from orchestrator.errors import ConfigError

#: Standard Webhooks secrets are shown to users with this prefix.
SECRET_PREFIX = "whsec_"
#: Default tolerance of ``webhook-timestamp`` against the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300.0

_SEPARATORS = re.compile(r"[\s,]+")


class SecretFormatError(ConfigError, ValueError):
    """A configured secret cannot be used. The message never contains the secret."""


def generate_secret(auth: str = "standard") -> str:
    """A new random secret: ``whsec_`` + 32 base64 bytes for ``standard`` (the
    spec asks for 24 to 64 bytes), a URL-safe token for ``github`` and ``bearer``."""
    if auth == "standard":
        return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def split_secrets(raw: str) -> list[str]:
    """The secrets in one configured value: several are separated by spaces or
    commas, so a new secret can be added before the old one is removed."""
    return [part for part in _SEPARATORS.split(raw.strip()) if part]


@lru_cache(maxsize=64)
def standard_keys(raw: str) -> tuple[bytes, ...]:
    """The HMAC keys of a configured Standard Webhooks value.

    Each entry is ``whsec_<base64>``; as in the reference libraries, the
    prefix may be left out. Raises :class:`SecretFormatError` naming the
    entry's position (never its value) when one is not base64."""
    keys = []
    entries = split_secrets(raw)
    if not entries:
        raise SecretFormatError("no secret given")
    for position, entry in enumerate(entries, start=1):
        encoded = entry.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SecretFormatError(
                f"secret #{position} is not '{SECRET_PREFIX}' followed by base64"
            ) from None
        if not key:
            raise SecretFormatError(f"secret #{position} is empty")
        keys.append(key)
    return tuple(keys)


@lru_cache(maxsize=64)
def plain_keys(raw: str) -> tuple[bytes, ...]:
    """The secrets of a GitHub or bearer hook, as bytes (used as given)."""
    keys = tuple(entry.encode() for entry in split_secrets(raw))
    if not keys:
        raise SecretFormatError("no secret given")
    return keys


def _standard_digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b"%s.%s.%s" % (msg_id.encode(), timestamp.encode(), body)
    return hmac.digest(key, signed, "sha256")  # one-shot OpenSSL call: the fast path


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value a Standard Webhooks sender puts on ``body``
    (for tests, the benchmark and ``dev``). ``secret`` is one ``whsec_`` value."""
    key = standard_keys(secret)[0]  # several configured: sign with the first
    digest = _standard_digest(key, msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All three Standard Webhooks headers for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(secret, msg_id, timestamp, body),
    }


def verify_standard(
    keys: Sequence[bytes],
    *,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> str | None:
    """``None`` when one ``v1`` signature in ``signature`` matches one of ``keys``
    and ``timestamp`` is within ``tolerance_s`` of ``now``; else the reason."""
    if not msg_id:
        return "missing webhook-id header"
    if not timestamp:
        return "missing webhook-timestamp header"
    if not signature:
        return "missing webhook-signature header"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "webhook-timestamp is not an integer unix time in seconds"
    age = now - sent_at
    if age > tolerance_s:
        return f"webhook-timestamp is {age:.0f} s old, outside the {tolerance_s:.0f} s tolerance"
    if -age > tolerance_s:
        return (
            f"webhook-timestamp is {-age:.0f} s in the future, "
            f"outside the {tolerance_s:.0f} s tolerance"
        )
    candidates = []
    for entry in signature.split():
        version, sep, value = entry.partition(",")
        if sep and version == "v1":
            candidates.append(value.encode("utf-8", "replace"))
    if not candidates:
        return "webhook-signature has no 'v1,<base64>' entry"
    matched = False
    for key in keys:
        expected = base64.b64encode(_standard_digest(key, msg_id, timestamp, body))
        for candidate in candidates:
            # No early exit: the time taken does not depend on which one matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        return "no signature in webhook-signature matches this body, id and timestamp"
    return None


def sign_github(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends with ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github(keys: Sequence[bytes], *, signature: str | None, body: bytes) -> str | None:
    """``None`` when ``X-Hub-Signature-256`` is ``sha256=<hex>`` of ``body`` under a key."""
    if not signature:
        return "missing X-Hub-Signature-256 header"
    scheme, sep, given = signature.strip().partition("=")
    if not sep or scheme != "sha256":
        return "X-Hub-Signature-256 is not 'sha256=<hex digest>'"
    candidate = given.lower().encode("utf-8", "replace")
    matched = False
    for key in keys:
        expected = hmac.digest(key, body, "sha256").hex().encode()
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        return "X-Hub-Signature-256 does not match this body"
    return None


def verify_bearer(keys: Sequence[bytes], *, authorization: str | None) -> str | None:
    """``None`` when ``Authorization`` is ``Bearer <token>`` with a configured token."""
    if not authorization:
        return "missing Authorization header"
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "Authorization is not 'Bearer <token>'"
    # Hashing both sides first keeps even the token's length out of the timing.
    given = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(hashlib.sha256(key).digest(), given)
    if not matched:
        return "bearer token is not valid for this hook"
    return None
