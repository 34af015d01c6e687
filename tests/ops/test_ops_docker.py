"""Dockerfile, .dockerignore and the lock files, checked statically (no Docker engine runs here).

What a build would prove, checked from the text: multi-stage, a pinned slim Python 3.11 base,
dependencies in a virtualenv in the build stage only, installed from hash-checked lock files
(build tools included), no compilers or dev extras in the final image, a numeric non-root user,
`fmhl-ops` as the entrypoint, migrations at /app/sql.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RUNTIME_LOCK = REPO / "requirements.lock"
BUILD_LOCK = REPO / "requirements-build.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
UID = "10001"
PINNED_BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|[a-z0-9.+-]+-dev)\b")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions() -> list[Instruction]:
    """Dockerfile instructions with comments dropped and continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(pending)
            pending = ""
    assert not pending, "dangling line continuation"
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), " ".join(args.split())))
    return result


def base_args() -> dict[str, str]:
    """``ARG NAME=default`` lines before the first FROM (the base image is one: PYTHON_BASE)."""
    found: dict[str, str] = {}
    for instruction in instructions():
        if instruction.keyword == "FROM":
            break
        assert instruction.keyword == "ARG", f"only ARG may come before the first FROM: {instruction}"
        name, sep, default = instruction.args.partition("=")
        assert sep and default, f"ARG {name} before FROM needs a default (a plain build uses it)"
        found[name] = default
    return found


def stages() -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction.keyword == "FROM":
            found.append([])
        elif not found:
            continue  # the ARGs before the first FROM: base_args()
        found[-1].append(instruction)
    return found


def final_stage() -> list[Instruction]:
    return stages()[-1]


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def test_multi_stage_with_a_pinned_slim_python_311_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    defaults = base_args()
    for stage in all_stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], stage[0].args.split()[0])
        assert PINNED_BASE.fullmatch(image), f"base image not pinned to a 3.11.x slim release: {image}"
    assert re.fullmatch(r"\S+ AS build", all_stages[0][0].args)


def pip_installs(stage: list[Instruction]) -> list[list[str]]:
    """The arguments after ``pip install`` of every command in the stage's RUN instructions."""
    found = []
    for run in args_of(stage, "RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def test_dependencies_go_into_a_venv_in_the_build_stage() -> None:
    build = stages()[0]
    runs = " ".join(args_of(build, "RUN"))
    assert "python -m venv /opt/venv" in runs
    assert any(arg.startswith("PATH=/opt/venv/bin:") for arg in args_of(build, "ENV"))
    installs = pip_installs(build)
    assert ["--no-deps", "--no-build-isolation", "."] in installs, "the package itself, nothing else"
    final = final_stage()
    assert "--from=build /opt/venv /opt/venv" in args_of(final, "COPY")
    assert not [r for r in args_of(final, "RUN") if "pip " in r], "no installs in the final stage"


def test_every_install_is_hash_checked_or_the_package_itself() -> None:
    """Nothing reaches the image unpinned: each pip install reads a lock with --require-hashes,
    or installs our own source with --no-deps. Builds run without isolation, so pip never fetches
    a build backend by itself; the build tools come from the build lock as wheels only."""
    build = stages()[0]
    installs = pip_installs(build)
    locks = []
    for args in installs:
        if args[-1] == ".":
            assert "--no-deps" in args and "--no-build-isolation" in args, args
            continue
        assert "--require-hashes" in args, f"pip install {' '.join(args)}: no --require-hashes"
        requirement_files = [args[i + 1] for i, arg in enumerate(args) if arg == "-r"]
        assert len(requirement_files) == 1 and len(args) == len(set(args)), args
        positional = [a for a in args if not a.startswith("-") and a not in requirement_files]
        assert positional in ([], [":all:"]), f"pip install {' '.join(args)}: installs more than the lock"
        locks.append(requirement_files[0])
        if requirement_files[0] == BUILD_LOCK.name:
            assert "--only-binary" in args and ":all:" in args, "build tools from wheels only"
        else:
            assert "--no-build-isolation" in args, args
    assert locks == [BUILD_LOCK.name, RUNTIME_LOCK.name], "build tools first, then the runtime lock"
    copies = [c.split()[:-1] for c in args_of(build, "COPY")]
    assert [RUNTIME_LOCK.name, BUILD_LOCK.name] in copies, (
        "copy the locks alone: a code change keeps the cache"
    )
    runs = " ".join(args_of(build, "RUN"))
    assert "pip uninstall -y setuptools wheel" in runs, "build tools do not ship"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]
    marker: Marker | None = None


def read_lock(path: Path) -> dict[str, Pin]:
    """name -> Pin, from a ``--generate-hashes`` lock (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --")
        requirement = Requirement(spec.strip())
        versions = [str(s.version) for s in requirement.specifier if s.operator == "=="]
        assert len(versions) == 1 and len(requirement.specifier) == 1, f"{path.name}: {line} is not pinned"
        hashes = tuple(o.strip().removeprefix("hash=sha256:") for o in options if o.startswith("hash="))
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{path.name}: {spec}"
        assert len(hashes) == len(options), f"{path.name}: {spec}: only --hash options"
        assert not requirement.extras and not requirement.url, f"{path.name}: {spec}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = Pin(name, versions[0], hashes, requirement.marker)
    return pins


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, BUILD_LOCK], ids=lambda p: p.name)
def test_lock_files_are_universal_uv_output(lock: Path) -> None:
    """Resolved once for every Python the package supports (``uv pip compile --universal``), not
    for the Python of whoever ran the tool: a lock made on 3.11.7 once left out a dependency that
    3.11.2 (Debian 12) needs, and the image build failed there."""
    text = lock.read_text()
    command = re.search(r"^#\s+(uv pip compile .*)$", text, re.MULTILINE)
    assert command, f"{lock.name}: regenerate with uv pip compile (README, 'Container image')"
    options = command.group(1).split()
    for option in ("--universal", "--generate-hashes"):
        assert option in options, f"{lock.name}: made without {option}"
    floor = re.search(r">=\s*(3\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor and options[options.index("--python-version") + 1] == floor.group(1), (
        "resolved from the oldest Python the package supports"
    )
    assert read_lock(lock), lock.name
    # Resolved against the default index only: no other index, no machine-local wheel directory.
    for option in ("--index-url", "--extra-index-url", "--find-links", "file://"):
        assert option not in text, f"{lock.name}: {option}"


# Pythons the package supports (requires-python >=3.11), the 3.11 patch releases around redis's
# marker included: Debian 12 ships 3.11.2, the official image 3.11.10.
SUPPORTED_PYTHONS = ("3.11.0", "3.11.2", "3.11.3", "3.11.10", "3.12.8", "3.13.1")


@pytest.mark.parametrize("python", SUPPORTED_PYTHONS)
def test_runtime_lock_is_complete_on_every_supported_python(python: str) -> None:
    """Walk the dependency closure of the project on Linux with ``python``, reading each locked
    package's requirements from its installed metadata, and check that every package it needs is
    in the lock with a marker that selects it there (pip skips a line whose marker is false)."""
    pins = read_lock(RUNTIME_LOCK)
    env = {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "extra": "",
    }
    pending = [Requirement(dep) for dep in PYPROJECT["project"]["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"Python {python} needs {requirement} but {RUNTIME_LOCK.name} lacks {name}"
        pin = pins[name]
        assert pin.marker is None or pin.marker.evaluate(env), (
            f"Python {python} needs {name} but the lock's marker ({pin.marker}) leaves it out"
        )
        assert requirement.specifier.contains(pin.version, prereleases=True), f"{name}=={pin.version}"
        if name in seen:
            continue
        seen.add(name)
        try:
            installed = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed on this interpreter (e.g. async-timeout on 3.11.7): a leaf here
        if installed.version != pin.version:
            continue  # metadata of another version would prove nothing
        for extra_requirement in installed.requires or []:
            nested = Requirement(extra_requirement)
            wanted = {canonicalize_name(e) for e in requirement.extras}
            if nested.marker is not None and "extra" in str(nested.marker):
                if not any(nested.marker.evaluate({**env, "extra": e}) for e in wanted):
                    continue
            pending.append(nested)
    assert {"redis", "asyncpg", "starlette"} <= seen


def test_runtime_lock_keeps_async_timeout_for_old_311_patch_releases() -> None:
    """The case that broke the Debian 12 build: redis needs async-timeout below 3.11.3."""
    pin = read_lock(RUNTIME_LOCK)["async-timeout"]
    assert pin.marker is not None
    assert pin.marker.evaluate({"python_full_version": "3.11.2", "python_version": "3.11"})
    assert not pin.marker.evaluate({"python_full_version": "3.11.10", "python_version": "3.11"})


def test_runtime_lock_covers_the_project_dependencies_and_nothing_for_development() -> None:
    pins = read_lock(RUNTIME_LOCK)
    for dependency in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in {RUNTIME_LOCK.name}: re-run pip-compile"
        assert requirement.specifier.contains(pins[name].version), (
            f"{name}=={pins[name].version} does not satisfy {requirement.specifier}: re-run pip-compile"
        )
    optional = {
        canonicalize_name(Requirement(dep).name)
        for deps in PYPROJECT["project"]["optional-dependencies"].values()
        for dep in deps
    }
    assert not optional & set(pins), f"dev/embedded-only packages in the image lock: {optional & set(pins)}"
    # The Dockerfile removes the build tools after the install: nothing at runtime may need them.
    assert not {"setuptools", "wheel", "pip"} & set(pins)


def test_build_lock_pins_the_build_backend() -> None:
    pins = read_lock(BUILD_LOCK)
    for dependency in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name].version), dependency


def test_no_dev_extras_editable_installs_or_compilers_in_the_image() -> None:
    for instruction in instructions():
        if instruction.keyword != "RUN":
            continue
        assert not re.search(r"\.\[[^\]]*\]", instruction.args), f"extras installed: {instruction.args}"
        assert " -e " not in f" {instruction.args} ", f"editable install: {instruction.args}"
    for run in args_of(final_stage(), "RUN"):
        if "apt-get install" in run or "apk add" in run:
            assert not BUILD_TOOLS.search(run), f"build tools in the final image: {run}"


def test_runs_as_a_numeric_non_root_user() -> None:
    final = final_stage()
    users = args_of(final, "USER")
    assert users, "the final stage must set USER"
    assert users[-1].split(":")[0] == UID, users[-1]
    assert final[-1].keyword in {"CMD", "ENTRYPOINT", "EXPOSE", "USER"}, "nothing may run as root after USER"
    useradd = " ".join(args_of(final, "RUN"))
    assert f"--uid {UID}" in useradd and f"--gid {UID}" in useradd


def test_entrypoint_is_the_console_script() -> None:
    final = final_stage()
    (entrypoint,) = args_of(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["fmhl-ops"], "exec form, so signals reach the process"
    (cmd,) = args_of(final, "CMD")
    assert json.loads(cmd)[0] == "serve"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "fmhl-ops" in scripts


def test_migrations_are_shipped_and_located() -> None:
    final = final_stage()
    assert "sql/ /app/sql/" in args_of(final, "COPY")
    env = " ".join(args_of(final, "ENV"))
    assert "SQL_DIR=/app/sql" in env.split()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory match covers its files."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        candidates = [glob, glob.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(prefix, g) for prefix in prefixes for g in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_to_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for instruction in instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            sources += instruction.args.split()[:-1]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (REPO / path).exists(), f"COPY source missing: {path}"
        assert not _ignored(path, patterns), f".dockerignore excludes {path}, which the Dockerfile copies"
        for file in (REPO / path).rglob("*") if (REPO / path).is_dir() else []:
            relative = file.relative_to(REPO).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not _ignored(relative, patterns), f".dockerignore excludes {relative}"
    for secret_or_bulk in (".git/config", ".venv/bin/python", ".env", "tests/conftest.py", "bench/x.py"):
        assert _ignored(secret_or_bulk, patterns), f"{secret_or_bulk} would be sent to the daemon"
    assert _ignored("shared/__pycache__/metrics.cpython-311.pyc", patterns)
