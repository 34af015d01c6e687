"""Infrastructure every process needs: settings, Postgres pool and timed queries, Redis client and
every Redis key name, JSON logging, metrics, correlation ids, domain errors, time/id/JSON helpers,
migrations and the uvicorn side servers. Imports nothing else from ``shared``.
"""
