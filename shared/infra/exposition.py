"""Prometheus text exposition (format 0.0.4) of the process's collectors, in time linear in the values.

Every scrape formats every current value: nothing but what cannot change once a series exists is
cached, namely each series' sample name with its rendered, sorted, escaped label set (``name{a="x"} ``),
one per sample line (a histogram series has one per bucket, then ``_count`` and ``_sum``). A scrape
then costs one string format per sample line; labels are never sorted, escaped or joined again.

The output is byte for byte what aioprometheus's ``TextFormatter`` writes (same block order, line
order, label order with ``le`` sorted among the others, same number formatting), with one
difference: label values and HELP text are escaped as the format requires (backslash, newline and,
in label values, double quote), which aioprometheus does not do.

This module reads aioprometheus collectors by shape (``ExposedCollector``) and does not import it:
``shared/infra/metrics.py`` stays the only module that does. The shape is aioprometheus 23.12's:
``values.store`` maps a series key (orjson bytes of the sorted label dict, or ``"__EMPTY__"``) to a
number, or for a histogram to an aggregator whose ``buckets`` are already cumulative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EMPTY_KEY = "__EMPTY__"
# A label set is cached for as long as its series exists. Series dropped (``Metrics.replace_gauge``)
# leave their entry behind until a collector's cache holds this many more entries than it has series.
STALE_SLACK = 64
# Bucket counts are ints written as floats ("3.0"): below this, str(float(n)) is f"{n}.0".
EXACT_INT_TEXT_BELOW = 10**16


class ExposedKind(Protocol):
    @property
    def name(self) -> str: ...


class ExposedCollector(Protocol):
    """What the renderer reads of an aioprometheus collector."""

    @property
    def name(self) -> str: ...
    @property
    def doc(self) -> str: ...
    @property
    def kind(self) -> ExposedKind: ...
    @property
    def const_labels(self) -> Mapping[str, object]: ...
    @property
    def values(self) -> Any: ...


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_bound(bound: float) -> str:
    """A bucket's ``le`` value, as aioprometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    return str(bound)


def _label_set(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{escape_label_value(str(labels[key]))}"' for key in sorted(labels))
    return f"{{{pairs}}}"


class _Family:
    """One collector: its header and the cached line prefixes of each of its series."""

    __slots__ = ("collector", "header", "histogram", "prefixes", "sort_key")

    def __init__(self, collector: ExposedCollector) -> None:
        kind = collector.kind.name
        if kind not in ("counter", "gauge", "untyped", "histogram"):
            raise TypeError(f"{collector.name}: cannot expose a {kind}")
        self.collector = collector
        self.histogram = kind == "histogram"
        self.sort_key = f"# HELP {collector.name} {collector.doc}"
        help_line = f"# HELP {collector.name} {escape_help(collector.doc)}"
        self.header = f"{help_line}\n# TYPE {collector.name} {kind}\n"
        self.prefixes: dict[object, Any] = {}

    def _labels(self, key: object) -> dict[str, object]:
        labels: dict[str, object] = dict(self.collector.const_labels)
        if key != EMPTY_KEY:
            labels.update(json.loads(key))  # type: ignore[arg-type]
        return labels

    def _scalar_prefix(self, key: object) -> str:
        return f"{self.collector.name}{_label_set(self._labels(key))} "

    def _histogram_prefixes(self, key: object, bounds: Iterable[float]) -> tuple[str, ...]:
        name, labels = self.collector.name, self._labels(key)
        buckets = [f"{name}_bucket{_label_set({**labels, 'le': format_bound(b)})} " for b in bounds]
        plain = _label_set(labels)
        return (*buckets, f"{name}_count{plain} ", f"{name}_sum{plain} ")

    def render(self, out: list[str]) -> None:
        out.append(self.header)
        store: dict[object, Any] = self.collector.values.store
        if self.histogram:
            self._render_histograms(store, out)
        else:
            prefixes = self.prefixes
            for key, value in store.items():
                prefix = prefixes.get(key)
                if prefix is None:
                    prefix = prefixes[key] = self._scalar_prefix(key)
                out.append(f"{prefix}{value}\n")
        if len(self.prefixes) > len(store) + STALE_SLACK:
            self.prefixes = {key: self.prefixes[key] for key in store if key in self.prefixes}

    def _render_histograms(self, store: dict[object, Any], out: list[str]) -> None:
        prefixes = self.prefixes
        for key, aggregator in store.items():
            counts = aggregator.buckets  # cumulative, +Inf last, ints
            cached = prefixes.get(key)
            if cached is None or len(cached) != len(counts) + 2:
                cached = prefixes[key] = self._histogram_prefixes(key, counts)
            observations, total = aggregator.observations, float(aggregator.sum)
            if type(observations) is int and observations < EXACT_INT_TEXT_BELOW:
                # every count is an int <= observations, and str(float(n)) == f"{n}.0" below 1e16
                out.extend([f"{head}{n}.0\n" for head, n in zip(cached, counts.values(), strict=False)])
                out.append(f"{cached[-2]}{observations}.0\n{cached[-1]}{total}\n")
            else:
                values = (*counts.values(), observations, total)
                out.extend([f"{head}{float(v)}\n" for head, v in zip(cached, values, strict=True)])


class Exposition:
    """Renders a registry's collectors; keep one per registry (it holds the label cache).

    A collector registered later is picked up at the next render (the block order is recomputed
    only then)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._order: list[_Family] = []

    def render(self, collectors: Iterable[ExposedCollector]) -> bytes:
        families = self._families_of(collectors)
        out: list[str] = []
        for family in families:
            family.render(out)
        return "".join(out).encode()

    def _families_of(self, collectors: Iterable[ExposedCollector]) -> list[_Family]:
        current = list(collectors)
        known = self._families
        if len(current) != len(self._order) or any(self._stale(c) for c in current):
            self._families = {c.name: known[c.name] if not self._stale(c) else _Family(c) for c in current}
            # aioprometheus sorts whole blocks as strings; names are unique and contain no space,
            # so two blocks differ within "# HELP <name> " and sorting by that header is the same.
            self._order = sorted(self._families.values(), key=lambda f: f.sort_key)
        return self._order

    def _stale(self, collector: ExposedCollector) -> bool:
        family = self._families.get(collector.name)
        return family is None or family.collector is not collector
