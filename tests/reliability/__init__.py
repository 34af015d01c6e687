"""Reliability: chaos (SIGKILL workers, restart Redis and Postgres), faults and graceful shutdown,
against servers each test module owns (``support.OwnServers``)."""
