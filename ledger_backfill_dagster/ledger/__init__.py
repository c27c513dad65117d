"""The ledger side: migrations, posting, checkpoints, reconciliation, rollback."""
