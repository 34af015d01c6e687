"""The thin Starlette service: parse and validate, call ``shared``, shape the response.
Imports ``shared`` only (never ``worker`` or ``cli``).
"""
