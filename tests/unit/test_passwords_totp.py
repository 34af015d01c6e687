"""Passwords (scrypt), TOTP steps, secret encryption, tokens and MFA_ENCRYPTION_KEY: no I/O."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import time
import urllib.parse

import pyotp
import pytest
from cryptography.fernet import Fernet

from cli.admin import read_password
from shared.auth import passwords, totp
from shared.auth.login import LoginAttempt
from shared.auth.passwords import DUMMY_HASH, hash_password, verify_dummy, verify_password
from shared.auth.sessions import hash_token, is_well_formed_token, new_token
from shared.auth.users import User, normalize_email
from shared.infra.config import ConfigError, Settings, load_settings
from shared.infra.errors import Invalid

SETTINGS = Settings(database_url=None, redis_url=None)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_hash_encodes_scrypt_parameters_and_a_16_byte_salt() -> None:
    stored = hash_password("correct horse battery")
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "131072", "8", "1")
    assert len(_unb64(salt)) == 16
    assert len(_unb64(key)) == 32
    assert "correct horse" not in stored


def test_same_password_gets_a_different_salt_and_both_verify() -> None:
    first, second = hash_password("pw-123456789"), hash_password("pw-123456789")
    assert first != second
    assert verify_password("pw-123456789", first) and verify_password("pw-123456789", second)
    assert not verify_password("pw-123456780", first)
    assert not verify_password("", first)


def test_verification_uses_the_parameters_stored_in_the_hash() -> None:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"older cheaper hash", salt=salt, n=2**10, r=8, p=1, dklen=32)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")  # noqa: E731
    stored = f"scrypt$1024$8$1${b64(salt)}${b64(key)}"
    assert verify_password("older cheaper hash", stored)
    assert not verify_password("older cheaper hash!", stored)


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$abc$def", "scrypt$16384$8$1$!!$!!", "scrypt$3$8$1$YQ$YQ"],
)
def test_malformed_stored_hash_never_matches(stored: str) -> None:
    assert verify_password("anything", stored) is False


def test_dummy_hash_costs_what_a_real_one_costs() -> None:
    # Same parameters as today's hashes, so an unknown email spends the same time as a known one.
    assert DUMMY_HASH.split("$")[:4] == hash_password("x" * 12).split("$")[:4]
    assert verify_dummy("whatever") is False


def test_password_policy() -> None:
    passwords.check_password_policy("x" * 12)
    with pytest.raises(passwords.WeakPassword):
        passwords.check_password_policy("x" * 11)
    with pytest.raises(passwords.WeakPassword):
        passwords.check_password_policy("x" * 1025)


def test_matched_step_accepts_one_step_of_drift_either_side_and_names_it() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    step = int(now // 30)
    for offset in (-1, 0, 1):
        assert totp.matched_step(secret, totp.code_at(secret, step + offset), now=now) == step + offset
    for offset in (-3, -2, 2, 3):
        assert totp.matched_step(secret, totp.code_at(secret, step + offset), now=now) is None


def test_our_codes_are_what_authenticator_apps_produce() -> None:
    secret = totp.new_secret()
    assert totp.matched_step(secret, pyotp.TOTP(secret).now()) == totp.current_step()
    assert totp.current_step(time.time()) == pyotp.TOTP(secret).timecode(time.time())


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", " 12345"])
def test_malformed_codes_never_match(code: str) -> None:
    assert totp.matched_step(totp.new_secret(), code) is None


def test_provisioning_uri_carries_secret_issuer_and_account() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "ops@example.test")
    assert uri.startswith("otpauth://totp/")
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert urllib.parse.unquote(uri).count("ops@example.test") == 1
    assert "issuer=FMHL" in uri
    assert len(base64.b32decode(secret)) == 20  # 160 bits


def test_secret_is_encrypted_at_rest_and_needs_the_right_key() -> None:
    key = Fernet.generate_key().decode()
    cipher = totp.mfa_cipher(dataclasses.replace(SETTINGS, mfa_encryption_key=key))
    secret = totp.new_secret()
    stored = totp.encrypt_secret(cipher, secret)
    assert secret not in stored
    assert totp.decrypt_secret(cipher, stored) == secret
    other = Fernet(Fernet.generate_key())
    with pytest.raises(totp.SecretUnreadable):
        totp.decrypt_secret(other, stored)


def test_missing_or_bad_mfa_key_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="MFA_ENCRYPTION_KEY"):
        totp.mfa_cipher(SETTINGS)
    with pytest.raises(ConfigError, match="MFA_ENCRYPTION_KEY"):
        totp.mfa_cipher(dataclasses.replace(SETTINGS, mfa_encryption_key="not-a-fernet-key"))


@pytest.mark.parametrize(
    "value",
    ["short", "x" * 44, "é" * 44, Fernet.generate_key().decode()[:-2]],
    # fixed ids: pytest-xdist workers must collect the same names (the last value is random)
    ids=["short", "ascii_44", "non_ascii_44", "truncated_fernet_key"],
)
def test_load_settings_rejects_a_bad_key_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"MFA_ENCRYPTION_KEY": value})
    message = str(info.value)
    assert message.startswith("MFA_ENCRYPTION_KEY=")
    assert "expected" in message and "\n" not in message
    assert value not in message


def test_load_settings_accepts_a_fernet_key() -> None:
    key = Fernet.generate_key().decode()
    assert load_settings({"MFA_ENCRYPTION_KEY": f" {key} "}).mfa_encryption_key == key
    assert load_settings({}).mfa_encryption_key is None


def test_tokens_carry_32_random_bytes_and_only_their_hash_is_kept() -> None:
    token = new_token()
    assert len(_unb64(token)) == 32
    assert is_well_formed_token(token)
    assert hash_token(token) == hashlib.sha256(token.encode()).digest()
    assert len({new_token() for _ in range(100)}) == 100
    for bad in ("", "short", token + " ", "a" * 257, "tok/en" * 8):
        assert not is_well_formed_token(bad)


def test_secrets_stay_out_of_reprs() -> None:
    attempt = LoginAttempt(email="a@b.c", password="hunter2hunter2", totp_code="123456", ip=None)
    assert "hunter2" not in repr(attempt) and "123456" not in repr(attempt)
    user_fields = {f.name: f.repr for f in dataclasses.fields(User)}
    assert user_fields["password_hash"] is False and user_fields["totp_secret_encrypted"] is False


def test_emails_are_normalised() -> None:
    assert normalize_email("  Ops@Example.TEST ") == "ops@example.test"
    for bad in ("", "no-at-sign", "@example.test", "a b@example.test", "a@" + "x" * 330):
        with pytest.raises(Invalid, match="email"):
            normalize_email(bad)


def test_password_from_a_pipe_is_the_first_line() -> None:
    assert read_password(io.StringIO("pass word with spaces  \nsecond line\n")) == "pass word with spaces  "
    assert read_password(io.StringIO("no newline at end")) == "no newline at end"
    assert read_password(io.StringIO("windows\r\n")) == "windows"
