"""The dead-letter queue: capture (never lost, never twice), the Redis spool, browsing and failure
groups, exactly-once redrive, retention cleanup, fingerprints. Imports ``shared.infra``,
``shared.jobs`` and ``shared.audit``.
"""
