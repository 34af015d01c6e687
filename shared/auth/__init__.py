"""Admin identity: users, scrypt passwords, encrypted TOTP, login with lockout and replay guard,
sessions. Imports ``shared.infra`` and ``shared.audit``.
"""
