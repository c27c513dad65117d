"""Backfill historical double-entry ledger data into PostgreSQL with Dagster."""
