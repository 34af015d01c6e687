"""Redrive tasks: a DLQ redrive as a tracked, throttled, leased task with a circuit breaker.
Imports ``shared.infra``, ``shared.jobs``, ``shared.audit`` and ``shared.dlq``.
"""
