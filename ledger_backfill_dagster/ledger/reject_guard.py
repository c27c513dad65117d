"""The reject guard: a partition whose share of rejected rows passes MAX_REJECT_RATIO is not
posted, because so many rejects almost always mean a wrong setting (a column map, a time zone, a
chart of accounts) rather than bad rows; posting the few that passed would load a day that is
mostly missing. Its valid rows stay staged, nothing is lost: the run fails naming the partition,
its ratio and its most frequent reasons, and a re-run after the fix (or with an override and
its reason) posts them.

The ratio is rejected / (valid + rejected) rows of the partition, rejects of every stage. A
partition of fewer than REJECT_GUARD_MIN_ROWS rows is not judged (two bad rows of three are not a
pattern; a long history of small days may set it to, say, 100).

Off by default (MAX_REJECT_RATIO=1): the product's first promise is that bad rows never keep
valid ones out of the ledger, and a hostile or messy export of mostly bad rows is an input it
must post the rest of, as it did before the guard existed. An operator turns it on per source
(0.5 is the recommended value for a production source whose reject profile is known).
Decisions: docs/decisions.md."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import psycopg

from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.sql_files import query

DEFAULT_MAX_REJECT_RATIO = "1"  # off: see the module docstring
RECOMMENDED_MAX_REJECT_RATIO = "0.5"
DEFAULT_MIN_ROWS = 1
# Run tags for a one-run override (the UI's launchpad, `dagster job execute --tags`); the reason
# is required and recorded with the run's posting metadata.
RATIO_TAG = "ledger/max_reject_ratio"
REASON_TAG = "ledger/reject_guard_reason"
REASONS_SHOWN = 3


def parse_ratio(value: str, setting: str = "MAX_REJECT_RATIO") -> Decimal:
    """A ratio from 0 to 1, exactly as written (never a float)."""
    try:
        ratio = Decimal(value.strip())
    except (InvalidOperation, AttributeError):
        raise SettingsError(f"{setting} must be a number from 0 to 1, got {value!r}") from None
    if not ratio.is_finite() or not Decimal(0) <= ratio <= Decimal(1):
        raise SettingsError(f"{setting} must be a number from 0 to 1, got {value!r}")
    return ratio


@dataclass(frozen=True)
class RejectGuard:
    max_ratio: Decimal
    min_rows: int
    reason: str | None = None  # why this run overrides the setting (RATIO_TAG), if it does

    @classmethod
    def for_run(cls, setting: str, min_rows: int, tags: dict[str, str]) -> RejectGuard:
        """The setting's guard, or the run's override (RATIO_TAG), which needs REASON_TAG."""
        if RATIO_TAG not in tags:
            return cls(parse_ratio(setting), min_rows)
        reason = tags.get(REASON_TAG, "").strip()
        if not reason:
            raise SettingsError(
                f"run tag {RATIO_TAG} overrides MAX_REJECT_RATIO only with a reason: "
                f"add the tag {REASON_TAG} saying why"
            )
        return cls(parse_ratio(tags[RATIO_TAG], f"run tag {RATIO_TAG}"), min_rows, reason)

    def describe(self) -> str:
        if self.reason:
            return f"{self.max_ratio} (run tag {RATIO_TAG}, reason: {self.reason})"
        return f"{self.max_ratio} (MAX_REJECT_RATIO), partitions of {self.min_rows}+ rows"

    def held(self, valid: dict[str, int], rejected: dict[str, int]) -> list[HeldPartition]:
        """The partitions this guard holds, in key order."""
        found = []
        for key in sorted(valid):
            bad = int(rejected.get(key, 0))
            total = valid[key] + bad
            if total >= self.min_rows and total and Decimal(bad) / total > self.max_ratio:
                found.append(HeldPartition(key, valid[key], bad))
        return found


@dataclass(frozen=True)
class HeldPartition:
    partition_key: str
    valid: int
    rejected: int

    @property
    def ratio(self) -> Decimal:
        return Decimal(self.rejected) / (self.valid + self.rejected)

    def text(self, reasons: list[tuple[str, int]]) -> str:
        named = "; ".join(f"{reason} ({rows})" for reason, rows in reasons) or "none recorded"
        return (
            f"{self.partition_key}: {self.rejected} of {self.valid + self.rejected} rows rejected "
            f"({self.ratio:.1%}); most frequent: {named}"
        )


def top_reasons(
    conn: psycopg.Connection, source_id: str, keys: list[str]
) -> dict[str, list[tuple[str, int]]]:
    rows = conn.execute(
        query("rejects/top_reasons"),
        {"source_id": source_id, "partition_keys": keys, "per_partition": REASONS_SHOWN},
    ).fetchall()
    found: dict[str, list[tuple[str, int]]] = {key: [] for key in keys}
    for key, reason, count in rows:
        found[key].append((reason, int(count)))
    return found


def held_message(guard: RejectGuard, held: list[HeldPartition], reasons: dict) -> str:
    shown = "\n".join(h.text(reasons.get(h.partition_key, [])) for h in held[:20])
    more = f"\n... and {len(held) - 20} more" if len(held) > 20 else ""
    return (
        f"reject guard: {len(held)} partition(s) not posted, more than {guard.max_ratio:%} of "
        f"their rows rejected (limit {guard.describe()}); the other partitions were posted.\n"
        f"{shown}{more}\n"
        "Their valid rows stay staged. Fix the setting the reasons point at and re-run, or, if "
        f"the rejects are expected, re-run with the run tags {RATIO_TAG}=<ratio> and "
        f"{REASON_TAG}=<why> (docs/operations.md, 'Reject guard')."
    )
