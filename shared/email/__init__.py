"""Email: templates and the outbox (log or SMTP backend, idempotent sends). Imports
``shared.infra``, ``shared.jobs`` and ``shared.audit``.
"""
