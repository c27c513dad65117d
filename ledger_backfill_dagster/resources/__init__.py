"""Dagster resources: the ledger database, the backfill settings, and the sources."""
