"""``python -m bench [NAME ...]``: run the named benchmarks, or all of them with no argument."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import reconcile

BENCHES: dict[str, Callable[[], None]] = {
    "reconcile": reconcile.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        BENCHES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
