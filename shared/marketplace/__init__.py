"""The marketplace domain: providers and the ledger, lead distribution, refunds, reports, and the
cron logic that checks them (reactivation, reconciliation). May import every other ``shared`` package.
"""
