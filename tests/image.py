"""Build the Dockerfile with buildah and run processes from the built image without a container
runtime (none works here): for ``tests/e2e/test_image.py``.

* The base: the Dockerfile's ``PYTHON_BASE`` (the official ``python:3.11.x-slim-bookworm``) cannot
  be pulled without a registry, so a stand-in is made with ``debootstrap`` (Debian 12 minbase +
  ``python3`` + ``python3-venv``, i.e. Python 3.11.2, with ``python`` linked in /usr/local/bin as
  the official image has it). Its rootfs tarball is cached in ``cache_dir()`` and the imported image
  stays in buildah's storage, both named by ``BASE_KEY``, a hash of what makes the base (the
  debootstrap arguments and the steps after it), so only the first run on a machine pays for
  debootstrap and a changed recipe never reuses a stale base. Both live outside any clone, so a
  fresh clone on the same machine reuses them; a missing or half-written cache is remade.
  Measured on a new machine (nothing cached): debootstrap 51 s + a cold build 39 s, the 93 s setup
  of a CI run; a second clone on the same machine: the base and the dependency layer reused, 17 s
  (6 s when the code is unchanged too).
* The build: ``buildah bud --isolation chroot --layers`` (host network: pip reaches PyPI, and every
  download is hash-checked against the locks). ``--layers`` keeps the dependency layer between
  runs while the lock files are unchanged.
* Running: the image is mounted (``buildah mount``); each process gets a private mount namespace
  (``unshare --mount``) in which the image's rootfs is bind-mounted read-only, with a fresh tmpfs
  on /tmp (the only writable path), the host's /dev and a /proc; it is ``chroot``-ed into it and
  drops to uid/gid 10001 with no supplementary groups (``setpriv`` from the image) before it
  ``exec``s the image's entrypoint with the image's environment and working directory. It shares
  the host's network (the test's Postgres and Redis on 127.0.0.1).

What this proves and what it does not: README, "Container image".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.procs import Proc, program

DEBIAN_MIRROR = os.environ.get("FMHL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
UID = 10001
# What makes the stand-in base. Bump STEPS when the steps after debootstrap (in stand_in_base)
# change: the key, hence the cached tarball and the image tag, changes with them. The mirror is
# not part of it (any Debian mirror serves the same suite).
DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,python3-venv", "bookworm")
STEPS = "python -> /usr/bin/python3 in /usr/local/bin; apt caches emptied; PATH; CMD python3 (v1)"
BASE_KEY = hashlib.sha256(json.dumps([DEBOOTSTRAP_ARGS, STEPS]).encode()).hexdigest()[:12]
STAND_IN_BASE = f"localhost/fmhl-ops-stand-in-base:bookworm-{BASE_KEY}"


def cache_dir() -> Path:
    """Where the base's rootfs tarball is kept, outside any clone: ``FMHL_IMAGE_CACHE``, else
    ``$XDG_CACHE_HOME/fmhl-ops/image``, else ``/var/cache/fmhl-ops/image`` (root runs this)."""
    if os.environ.get("FMHL_IMAGE_CACHE"):
        return Path(os.environ["FMHL_IMAGE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "fmhl-ops" / "image"
    return Path("/var/cache/fmhl-ops/image")


def missing_tools() -> str | None:
    """Why the image test cannot run here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install buildah; podman alone cannot mount images here)"
    if os.geteuid() != 0:
        return "needs root: buildah mount, mount namespaces and chroot"
    if os.environ.get("FMHL_IMAGE_BASE") is None and shutil.which("debootstrap") is None:
        return "no FMHL_IMAGE_BASE given and debootstrap is not installed to make a stand-in base"
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _run(*argv: str, timeout: float = 900) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
        )
    return done.stdout


def _image_exists(name: str) -> bool:
    done = subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True, check=False)
    return done.returncode == 0


def stand_in_base() -> str:
    """The Debian 12 stand-in base image (made once, then taken from buildah's storage or the cache)."""
    if _image_exists(STAND_IN_BASE):
        return STAND_IN_BASE
    cached = cache_dir()
    cached.mkdir(parents=True, exist_ok=True)
    tarball = cached / f"bookworm-python3-rootfs-{BASE_KEY}.tar"
    if not tarball.exists():  # written as .partial, then renamed: a present tarball is whole
        with tempfile.TemporaryDirectory(dir=cached) as scratch:
            rootfs = Path(scratch) / "rootfs"
            _run("debootstrap", *DEBOOTSTRAP_ARGS, str(rootfs), DEBIAN_MIRROR)
            (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / cache).glob("*"):
                    if item.is_file():
                        item.unlink()
            partial = tarball.with_suffix(".partial")
            _run("tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), ".")
            partial.rename(tarball)
    container = _run("buildah", "from", "scratch").strip()
    try:
        mountpoint = _run("buildah", "mount", container).strip()
        _run("tar", "-C", mountpoint, "--numeric-owner", "-xf", str(tarball))
        _run(
            "buildah",
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            "python3",
            container,
        )
        _run("buildah", "commit", "--quiet", container, STAND_IN_BASE)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return STAND_IN_BASE


def _host_ca_volumes(scratch: Path) -> list[str]:
    """Where the host reaches PyPI through a TLS-inspecting proxy (it trusts that proxy's CA via
    ``PIP_CERT``), the build's RUN steps borrow the host's CA bundle: read-only volumes, a
    ``pip.conf`` holding only ``cert``; volumes are not committed, so the image is unchanged."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if not bundle or not Path(bundle).is_file():
        return []
    conf = scratch / "pip.conf"
    conf.write_text("[global]\ncert = /etc/fmhl-build-ca.crt\n")
    return ["--volume", f"{bundle}:/etc/fmhl-build-ca.crt:ro", "--volume", f"{conf}:/etc/pip.conf:ro"]


def build(repo: Path, base: str, tag: str) -> float:
    """``buildah bud`` of the repository's Dockerfile on ``base``; returns the seconds it took."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        _run(
            "buildah",
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--force-rm",
            *_host_ca_volumes(Path(scratch)),
            "--build-arg",
            f"PYTHON_BASE={base}",
            "--tag",
            tag,
            str(repo),
            timeout=1800,
        )
    return time.monotonic() - started


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str


def image_config(tag: str) -> ImageConfig:
    config = json.loads(_run("buildah", "inspect", "--type", "image", tag))["OCIv1"]["config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        env,
        config.get("Entrypoint") or [],
        config.get("Cmd") or [],
        config.get("User", ""),
        config.get("WorkingDir", "/"),
    )


@contextlib.contextmanager
def mounted(tag: str) -> Iterator[Path]:
    """The image's rootfs, via a working container that is removed afterwards."""
    container = _run("buildah", "from", "--pull-never", tag).strip()
    try:
        yield Path(_run("buildah", "mount", container).strip())
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def from_image(
    rootfs: Path, root: Path, config: ImageConfig, args: Sequence[str], env: Mapping[str, str]
) -> Proc:
    """A process started the way the image runs it, as uid/gid 10001 on a read-only root (see the
    module docstring), ``root`` an empty directory of ours to mount it on (in the process's own
    mount namespace only); its PID is the entrypoint's (every step ``exec``s)."""
    root.mkdir(parents=True, exist_ok=True)
    user, _, group = config.user.partition(":")
    script = (
        'set -e; mount --bind "$1" "$2"; mount -t tmpfs -o mode=1777 tmpfs "$2/tmp"; '
        'mount --rbind /dev "$2/dev"; mount -t proc proc "$2/proc"; '
        'mount -o remount,bind,ro "$2"; root="$2"; shift 2; '
        'exec chroot "$root" "$@"'
    )
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "fmhl-image",
        str(rootfs),
        str(root),
        "/usr/bin/setpriv",
        f"--reuid={user}",
        f"--regid={group or user}",
        "--clear-groups",
        "--no-new-privs",
        "/usr/bin/env",
        f"--chdir={config.workdir}",
        *config.entrypoint,
        *args,
    ]
    # The image's environment (PATH, SQL_DIR, LOG_FORMAT ...), then the deployment's; nothing of ours.
    return program(argv, env={**config.env, **env, "HOME": "/nonexistent"})
