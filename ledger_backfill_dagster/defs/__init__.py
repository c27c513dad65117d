"""The Dagster definitions: assets, checks, jobs, schedules and sensors, by concern.

Dagster warns, once per decorated definition, about two features this code location uses on
purpose: `backfill_policy` (beta; single-run backfills are how a partition range posts in one
step, docs/decisions.md) and a `partitions_def` on an asset check (preview; the per-partition
checks of the reconciliation and the reject guard). Each `dagster` command printed five identical
warnings of the first kind; they say nothing an operator can act on, so they are silenced here,
before any definition is built, and only those two messages.
"""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy`", category=dg.BetaWarning)
warnings.filterwarnings(
    "ignore",
    message=r"Specifying a partitions_def on an AssetCheckSpec",
    category=dg.PreviewWarning,
)
