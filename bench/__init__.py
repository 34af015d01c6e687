"""Benchmarks that print timings and ratios against a baseline measured in the same run.

Not part of ``make test``. Run one with ``python -m bench NAME`` or all with ``make bench``.
"""
