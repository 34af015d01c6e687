"""Password hashing with ``hashlib.scrypt``; parameters travel inside the stored string.

Stored form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (unpadded url-safe base64, 16-byte
per-user salt, 32-byte derived key). Verification re-derives with the parameters found in the
string, so raising the cost later leaves existing hashes verifiable. Comparison is constant-time.

``verify_dummy`` spends the same work against a fixed hash, so a login for an unknown email takes
as long as one for a known email. scrypt blocks for ~50 ms; async callers run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Admin passwords are chosen by operators (CLI). Long passphrases are welcome; the upper bound
# only keeps a single request from carrying megabytes into the KDF.
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_SCHEME = "scrypt"
# 128 MiB: room for the cost raised a few steps above today's 16 MiB (n=2**14, r=8).
_MAX_MEMORY = 128 * 1024 * 1024


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
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAX_MEMORY
    )


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


# A hash of a random string nobody kept, with today's parameters. A constant (not computed
# lazily) so even the first unknown-email login costs exactly one derivation.
DUMMY_HASH = "scrypt$16384$8$1$FuhBPfSlf8pXry7l1PdWDw$uZr5x6CsyySf6wgSH1Sdo66O2BQGN03c4fq85lhX49o"


def verify_dummy(password: str) -> bool:
    """Spend one real verification's work and return False (unknown account)."""
    verify_password(password, DUMMY_HASH)
    return False
