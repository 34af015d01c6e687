"""The web console for on-call: server-rendered pages under ``/console`` and Swagger UI at ``/docs``.

May import ``service`` (state, readiness, validation) and ``shared``; never ``worker``.
"""
