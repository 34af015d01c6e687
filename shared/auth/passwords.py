"""Password hashing with ``hashlib.scrypt``; parameters travel inside the stored string.

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (unpadded url-safe base64, 16-byte
per-user salt, 32-byte derived key). Verification re-derives with the parameters found in the
string, so raising the cost later leaves existing hashes verifiable. Comparison is constant-time.

Cost: OWASP's scrypt parameters (Password Storage Cheat Sheet): N=2^17, r=8, p=1 — 128 MiB and
~0.3-0.6 s per derivation. Hashes with older (lower) parameters still verify, and ``needs_rehash``
tells the login use case to store a new hash at today's cost after a successful login.
At 128 MiB a derivation, at most ``KDF_CONCURRENCY`` run at once per process (the others wait for
a slot), so a burst of logins cannot exhaust a pod's memory.

``verify_dummy`` spends the same work against a fixed hash, so a login for an unknown email takes
as long as one for a known email. Async callers run the KDF in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading

SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Admin passwords are chosen by operators (CLI). Long passphrases are welcome; the upper bound
# only keeps a single request from carrying megabytes into the KDF.
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_SCHEME = "scrypt"
# 128 * r * N = 128 MiB today; twice that leaves room for one more step of cost.
_MAX_MEMORY = 256 * 1024 * 1024
KDF_CONCURRENCY = 2
_KDF_SLOTS = threading.BoundedSemaphore(KDF_CONCURRENCY)


class WeakPassword(ValueError):
    """The password does not meet the length policy."""


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    secret = password.encode("utf-8", "surrogatepass")
    with _KDF_SLOTS:
        return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAX_MEMORY)


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` in the self-describing stored form."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed stored string never matches."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected_key = _unb64(expected)
        actual = _derive(password, _unb64(salt), int(n), int(r), int(p), len(expected_key))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected_key)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than today's (rehash after login)."""
    try:
        scheme, n, r, p, _salt, _key = stored.split("$")
        return (scheme, int(n), int(r), int(p)) != (_SCHEME, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    except ValueError:
        return True


# A hash of a random string nobody kept, with today's parameters. A constant (not computed
# lazily) so even the first unknown-email login costs exactly one derivation.
DUMMY_HASH = "scrypt$131072$8$1$GXJSj7JmFfAYvgIIfwkqkw$fKEN5NPGB562r9bw_CXCVfuEhN7-EmPL9OJedOYUeeo"


def verify_dummy(password: str) -> bool:
    """Spend one real verification's work and return False (unknown account)."""
    verify_password(password, DUMMY_HASH)
    return False
