"""The roles a user can hold, said once: ``admin`` (every action) and ``support`` (console, read-only)."""

from __future__ import annotations

from typing import Final, Literal, get_args

Role = Literal["admin", "support"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
