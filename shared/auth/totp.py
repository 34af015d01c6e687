"""TOTP (RFC 6238) for admin MFA: enrolment, code checks that name the matched step, and the
encryption of secrets at rest.

Codes are 6 digits, SHA-1, 30 s steps (what every authenticator app defaults to). A code is
accepted for the current step and one step either side (clock drift). ``matched_step`` returns
*which* step matched so the caller can store it in ``users.totp_last_used_step`` and refuse that
step, and every earlier one, afterwards (one use per code).

Secrets are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under ``MFA_ENCRYPTION_KEY``; the
database holds only the Fernet token. Rotating the key means re-enrolling (``admin reset-mfa``).
"""

from __future__ import annotations

import hmac
import time

import pyotp
from cryptography.fernet import Fernet, InvalidToken

from shared.infra.config import ConfigError, Settings

ISSUER = "FMHL Ops"
DIGITS = 6
INTERVAL_SECONDS = 30
VALID_WINDOW = 1  # steps either side of now


class SecretUnreadable(RuntimeError):
    """A stored secret does not decrypt under the configured key (wrong or rotated key)."""


def mfa_cipher(settings: Settings) -> Fernet:
    """The Fernet for TOTP secrets; ``ConfigError`` naming ``MFA_ENCRYPTION_KEY`` if unusable."""
    key = settings.mfa_encryption_key
    if not key:
        raise ConfigError(
            "MFA_ENCRYPTION_KEY is required for admin accounts and login: expected a Fernet key "
            '(python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
        )
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ConfigError(
            "MFA_ENCRYPTION_KEY is invalid: expected a Fernet key (32 url-safe base64-encoded bytes)"
        ) from exc


def new_secret() -> str:
    """A fresh base32 secret of 160 bits (RFC 4226's recommended length)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://`` URI an authenticator app enrols from (show once; it *is* the secret)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_SECONDS).provisioning_uri(
        name=email, issuer_name=ISSUER
    )


def encrypt_secret(cipher: Fernet, secret: str) -> str:
    return cipher.encrypt(secret.encode("ascii")).decode("ascii")


def decrypt_secret(cipher: Fernet, token: str) -> str:
    try:
        return cipher.decrypt(token.encode("ascii")).decode("ascii")
    except InvalidToken as exc:
        raise SecretUnreadable("TOTP secret does not decrypt with MFA_ENCRYPTION_KEY") from exc


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // INTERVAL_SECONDS)


def matched_step(secret: str, code: str, *, now: float | None = None) -> int | None:
    """The time step whose code equals ``code`` within ±``VALID_WINDOW`` steps, else None.

    Every candidate is compared (constant-time), whatever matched first, so the time taken does
    not tell which step matched. If two steps share a code (a 1-in-a-million collision) the later
    step is returned: recording it refuses the code for the whole window. A code that is not
    exactly six ASCII digits never matches.
    """
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_SECONDS)
    step = current_step(now)
    found: int | None = None
    for candidate in range(step - VALID_WINDOW, step + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            found = candidate
    return found


def code_at(secret: str, step: int) -> str:
    """The code of ``step`` (tests and tooling; the server never needs to print one)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_SECONDS).generate_otp(step)
