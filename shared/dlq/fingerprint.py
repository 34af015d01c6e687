"""Error fingerprints: a stable hash that groups "the same failure" across jobs and processes.

fingerprint = sha256(error type | message with volatile parts masked | top in-app frame)[:16].
Masked (all to ``<*>``): UUIDs, long hex ids, quoted values, e-mail addresses and numbers, so "lead 123 not
found" and "lead 456 not found" group together. The frame is ``module:function`` of the
innermost frame inside our own packages (no line numbers: they move with every deploy).
"""

from __future__ import annotations

import hashlib
import re
import traceback
from types import TracebackType

_APP_PACKAGES = ("shared", "worker", "service")

# One placeholder for every volatile kind: the same slot may carry a number in one message and a
# UUID in another (ids of different tables), and they must still group together.
VOLATILE = "<*>"

_MASKS = (
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), VOLATILE),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), VOLATILE),
    (re.compile(r"'[^']*'|\"[^\"]*\""), VOLATILE),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), VOLATILE),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), VOLATILE),
    (re.compile(r"[-+]?\d+(\.\d+)?"), VOLATILE),
)


def mask_message(message: str) -> str:
    masked = message
    for pattern, replacement in _MASKS:
        masked = pattern.sub(replacement, masked)
    return " ".join(masked.split())[:500]


def top_app_frame(tb: TracebackType | None) -> str:
    """``module:function`` of the innermost frame in our packages, or ``""``."""
    frame = ""
    for summary in traceback.extract_tb(tb):
        parts = summary.filename.replace("\\", "/").split("/")
        for index, part in enumerate(parts[:-1]):
            if part in _APP_PACKAGES and "site-packages" not in parts[:index]:
                module = ".".join([*parts[index:-1], parts[-1].removesuffix(".py")])
                frame = f"{module}:{summary.name}"
                break
    return frame


def fingerprint(error_type: str, message: str, frame: str = "") -> str:
    material = f"{error_type}|{mask_message(message)}|{frame}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
