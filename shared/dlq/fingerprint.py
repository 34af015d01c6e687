"""Error fingerprints: a stable hash that groups "the same failure" across jobs and processes.

fingerprint = sha256(error type | message with volatile parts masked | top in-app frame)[:16].
Masked (all to ``<*>``): UUIDs, long hex ids, quoted values, e-mail addresses and numbers, so "lead 123 not
found" and "lead 456 not found" group together. The frame is ``module:function`` of the
innermost frame inside our own packages (no line numbers: they move with every deploy).

Cost is linear in the message and bounded: only the first ``MASK_INPUT_LIMIT`` characters are
masked (the masked form keeps 500 characters anyway), and every pattern is linear — the e-mail
pattern may start only where a run of its characters starts (a lookbehind) and its local part is
possessive, so a megabyte of ``a.a.a.a…`` without an ``@`` is scanned once, not once per position.
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
MASK_INPUT_LIMIT = 8192
MASKED_LIMIT = 500
MAX_FRAMES_WALKED = 10_000

_MASKS = (
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), VOLATILE),
    (re.compile(r"(?<![\w.+-])[\w.+-]++@[\w-]++(?:\.[\w-]++)++"), VOLATILE),
    (re.compile(r"'[^']*+'|\"[^\"]*+\""), VOLATILE),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), VOLATILE),
    (re.compile(r"\b0x[0-9a-fA-F]++\b"), VOLATILE),
    (re.compile(r"[-+]?\d++(?:\.\d++)?"), VOLATILE),
)


def mask_message(message: str) -> str:
    masked = message[:MASK_INPUT_LIMIT]
    for pattern, replacement in _MASKS:
        masked = pattern.sub(replacement, masked)
    return " ".join(masked.split())[:MASKED_LIMIT]


def top_app_frame(tb: TracebackType | None) -> str:
    """``module:function`` of the innermost frame in our packages, or ``""``.

    Walks frames without reading source lines (``walk_tb``), at most ``MAX_FRAMES_WALKED``.
    """
    frame = ""
    for walked, (tb_frame, _lineno) in enumerate(traceback.walk_tb(tb)):
        if walked >= MAX_FRAMES_WALKED:
            break
        code = tb_frame.f_code
        parts = code.co_filename.replace("\\", "/").split("/")
        for index, part in enumerate(parts[:-1]):
            if part in _APP_PACKAGES and "site-packages" not in parts[:index]:
                module = ".".join([*parts[index:-1], parts[-1].removesuffix(".py")])
                frame = f"{module}:{code.co_name}"
                break
    return frame


def fingerprint(error_type: str, message: str, frame: str = "") -> str:
    material = f"{error_type}|{mask_message(message)}|{frame}"
    return hashlib.sha256(material.encode("utf-8", "backslashreplace")).hexdigest()[:16]
