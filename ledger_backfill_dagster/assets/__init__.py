"""The five stages of the seed's diagram, one module each, all partitioned by UTC day."""
# No `from __future__ import annotations` in asset modules: Dagster inspects the context
# parameter's annotation at definition time and needs the real class, not a string.
