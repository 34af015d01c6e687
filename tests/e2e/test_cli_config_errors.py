from __future__ import annotations

import subprocess

import pytest

from tests.procs import FMHL_OPS, base_env


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("DATABASE_URL", "mysql://nope", ["migrate"]),
        ("DATABASE_URL", "::::", ["serve"]),
        ("DLQ_RETENTION_DAYS", "thirty", ["serve"]),
        ("HEALTH_CHECK_TIMEOUT_SECONDS", "soon", ["migrate"]),
    ],
)
def test_bad_setting_exits_non_zero_with_one_line_naming_it(
    variable: str, value: str, command: list[str]
) -> None:
    env = base_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x", REDIS_URL="redis://127.0.0.1:1/0")
    env[variable] = value
    result = subprocess.run([FMHL_OPS, *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_database_url_is_named() -> None:
    result = subprocess.run([FMHL_OPS, "migrate"], env=base_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
