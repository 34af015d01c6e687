"""fmhl-ops shared package: code imported by both the HTTP service and the arq workers."""

from __future__ import annotations

__version__ = "0.1.0"
