"""Code both processes import, in packages by concern: ``infra`` <- ``jobs``, ``audit`` <- ``dlq``,
``auth``, ``email`` <- ``marketplace`` (arrows point at what may be imported). Never imports
``service``, ``worker`` or ``cli`` (``tests/unit/test_layering.py`` checks every direction).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fmhl-ops")  # one source: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"
