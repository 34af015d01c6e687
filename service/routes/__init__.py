"""HTTP routes, one module per concept. Each module exports ``ROUTES`` and ``OPENAPI_PATHS``."""
