"""HTTP routes, one module per concept; each lists its ``service.contract`` operations in ``OPERATIONS``."""
