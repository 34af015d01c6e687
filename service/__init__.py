"""The thin Starlette service: parse and validate, call ``shared``, shape the response."""
