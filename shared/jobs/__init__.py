"""Jobs: queue names, the job catalogue (name, queue, default retry policy), enqueueing, worker
heartbeats and queue statistics. Imports only ``shared.infra``.
"""
