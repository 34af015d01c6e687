"""``fmhl-ops admin``: account management for operators.

* ``admin create --email E --role admin|support`` — password from stdin (prompted twice without
  echo on a terminal; one line from a pipe), at least 12 characters. Prints the ``otpauth://``
  URI on stdout, once: it *is* the TOTP secret, so it is never logged or stored in clear.
* ``admin reset-mfa --email E`` — a new TOTP secret (prints its URI), revokes every session.
* ``admin disable --email E`` — sets ``disabled_at``, revokes every session; idempotent.

Each run binds one correlation id, so its audit rows (actor ``cli``) carry a request id. Errors
(duplicate email, unknown user, weak password, missing ``MFA_ENCRYPTION_KEY``) are one line on
stderr with a non-zero exit, like every ``fmhl-ops`` command.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from cli.errors import CliError
from cli.use_case import run_use_case
from shared.auth.roles import ROLES
from shared.auth.totp import mfa_cipher
from shared.auth.users import create_user, disable_user, normalize_email, reset_mfa
from shared.infra.config import Settings
from shared.infra.errors import DomainError

T = TypeVar("T")


def read_password(stream: TextIO) -> str:
    """From a terminal: ``getpass`` twice (no echo). From a pipe: the first line, newline stripped."""
    if stream.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise CliError("passwords do not match")
    else:
        password = stream.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password given on stdin")
    return password


def _run(settings: Settings, use_case: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``use_case(conn)`` on a short-lived pool, turning expected failures into one line."""
    return run_use_case(
        settings, lambda conn, _redis: use_case(conn), application_name="fmhl-ops-admin", needs_redis=False
    )


def _email(raw: str) -> str:
    try:
        return normalize_email(raw)
    except DomainError as exc:
        raise CliError(exc.message) from exc


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    # Configuration and arguments first, so an operator never types a password for nothing.
    settings.require_database_url()
    mfa_cipher(settings)
    email = _email(args.email)
    password = read_password(sys.stdin)
    enrolment = _run(
        settings, lambda conn: create_user(conn, settings, email=email, role=args.role, password=password)
    )
    print(enrolment.otpauth_uri, flush=True)
    print(
        f"created {enrolment.role} {enrolment.email}; add the otpauth:// URI above to an authenticator "
        "app now, it is not shown again",
        file=sys.stderr,
    )
    return 0


def cmd_reset_mfa(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database_url()
    mfa_cipher(settings)
    email = _email(args.email)
    enrolment = _run(settings, lambda conn: reset_mfa(conn, settings, email=email))
    print(enrolment.otpauth_uri, flush=True)
    print(
        f"new TOTP secret for {enrolment.email}; revoked {enrolment.sessions_revoked} session(s); "
        "the old authenticator entry no longer works",
        file=sys.stderr,
    )
    return 0


def cmd_disable(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database_url()
    email = _email(args.email)
    result = _run(settings, lambda conn: disable_user(conn, email=email))
    if result.already_disabled:
        print(f"{result.email} was already disabled (since {result.disabled_at.isoformat()})")
    else:
        print(f"disabled {result.email}; revoked {result.sessions_revoked} session(s)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser("admin", help="manage admin accounts (password + TOTP)")
    commands = admin.add_subparsers(dest="admin_command", required=True)

    p = commands.add_parser(
        "create", help="create an account: password on stdin, prints the otpauth:// URI once"
    )
    p.add_argument("--email", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.set_defaults(handler=cmd_create)

    p = commands.add_parser("reset-mfa", help="new TOTP secret (prints its URI); revokes sessions")
    p.add_argument("--email", required=True)
    p.set_defaults(handler=cmd_reset_mfa)

    p = commands.add_parser("disable", help="disable an account and revoke its sessions")
    p.add_argument("--email", required=True)
    p.set_defaults(handler=cmd_disable)
