"""Incident controls: pause/resume a queue, live jobs by state, and actions on one live job
(cancel, abort, run now). Imports ``shared.infra``, ``shared.jobs``, ``shared.audit``, ``shared.dlq``.
"""
