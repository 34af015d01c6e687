"""The ``fmhl-ops`` command line: every subcommand, admin account commands, the dev runner and the
embedded Postgres/Redis it (and the tests) start. The only package that imports both ``service``
and ``worker``; nothing imports it.
"""
