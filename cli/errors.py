"""The one error type the CLI turns into a one-line message and exit 1."""

from __future__ import annotations


class CliError(RuntimeError):
    """An operational error worth one line to the operator."""
