"""The arq worker pool: one ``Worker`` per queue, thin job functions, failure capture.
Imports ``shared`` only (never ``service`` or ``cli``).
"""
