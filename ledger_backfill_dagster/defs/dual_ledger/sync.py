"""Dagster definitions of the dual-ledger sync (the seed's scenario 4).

  dual_ledger_consistency       an asset check, partitioned like the backfill: per day, the SCB
                                side's control totals against what our ledger holds, and every
                                backfilled entry that lacks its outbox row (the seed's 6.3);
  dual_ledger_outbox_relay_job  delivers PENDING outbox rows to OUTBOX_RELAY_URL and marks them
                                SENT, or FAILED with attempts and the last error.

The SCB entries themselves arrive through the ordinary backfill job with BACKFILL_SOURCE_TYPE=SCB
(`sources/scb.py`); posting writes their outbox rows in the same transaction as the entries. The
daily schedules are in `schedules.py`.
"""

import dagster as dg
from pydantic import Field

from ledger_backfill_dagster.defs.backfill.common import rows_table
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.ledger.dual_ledger import DualLedgerReport, check_dual_ledger
from ledger_backfill_dagster.ledger.outbox import RelayOptions, relay_outbox
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.http_client import MalformedPageError, SourceRefusedError
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings
from ledger_backfill_dagster.resources.source_connection import OutboxEndpoint
from ledger_backfill_dagster.sources.scb import ScbSource

SHOWN = 200  # rows of evidence kept in metadata


def _scb_totals(source: ScbSource, keys: list[str]) -> dict:
    with source.client() as client:
        return {key: source.control_totals(client, key) for key in keys}


@dg.asset_check(
    asset=reconciliation_report,
    partitions_def=daily_partitions,
    blocking=False,
    description="Dual-ledger consistency per day: for an SCB source, its control totals (count "
    "and sum per currency) equal what our ledger holds of that day; for every source, each "
    "backfilled entry has its dual_ledger_outbox row (the seed's 6.3). Outbox sync status shown.",
)
def dual_ledger_consistency(
    context: dg.AssetCheckExecutionContext, source: SourceSettings, ledger_db: LedgerDatabase
) -> dg.AssetCheckResult:
    keys = sorted(context.partition_keys)
    try:
        reader = source.reader()
        scb_totals = _scb_totals(reader, keys) if isinstance(reader, ScbSource) else None
    except (SettingsError, MalformedPageError, SourceRefusedError, ConnectionError) as exc:
        raise dg.Failure(
            description=f"dual-ledger check cannot run: {redact(str(exc))}", allow_retries=False
        ) from exc
    with ledger_db.connection() as conn:
        report = check_dual_ledger(conn, reader.source_id, keys, scb_totals)
    return _result(report)


def _result(report: DualLedgerReport) -> dg.AssetCheckResult:
    problems = []
    if report.mismatches:
        problems.append(
            f"{len(report.mismatches)} partition/currency pair(s) differ from the SCB totals"
        )
    if report.missing_outbox:
        problems.append(f"{report.gaps} backfilled entr(ies) without an outbox row")
    return dg.AssetCheckResult(
        passed=report.consistent,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "dual ledger consistent",
        metadata={
            "source_id": dg.MetadataValue.text(report.source_id),
            "control_totals_checked": dg.MetadataValue.bool(report.control_totals_checked),
            "mismatches": dg.MetadataValue.int(len(report.mismatches)),
            "entries_without_outbox": dg.MetadataValue.int(report.gaps),
            **{
                f"outbox_{status.lower()}": dg.MetadataValue.int(count)
                for status, count in report.status_counts().items()
            },
            "control_totals": rows_table(
                [
                    {
                        "partition": c.partition_key,
                        "currency": c.currency,
                        "scb_count": c.scb_count,
                        "scb_sum": c.scb_sum,
                        "ledger_count": c.ledger_count,
                        "ledger_sum": c.ledger_sum,
                        "matches": c.matches,
                    }
                    for c in report.comparisons[:SHOWN]
                ],
                [
                    "partition",
                    "currency",
                    "scb_count",
                    "scb_sum",
                    "ledger_count",
                    "ledger_sum",
                    "matches",
                ],
            ),
            "without_outbox": rows_table(
                [vars(m) for m in report.missing_outbox[:SHOWN]],
                ["partition_key", "ledger_entry_id", "ledger_id", "reference_id"],
            ),
        },
    )


class RelayConfig(dg.Config):
    batch_size: int = Field(default=100, description="Outbox rows per request.")
    max_retries: int = Field(
        default=3, description="Retries of a request on a transient error before FAILED."
    )
    include_failed: bool = Field(
        default=False, description="Also retry rows an earlier relay marked FAILED."
    )
    source_id: str | None = Field(
        default=None, description="Only entries backfilled from this source (default: all)."
    )
    limit: int | None = Field(default=None, description="At most this many rows in this run.")


@dg.op(tags={"kind": "http"})
def relay_dual_ledger_outbox(
    context: dg.OpExecutionContext,
    config: RelayConfig,
    source: SourceSettings,
    ledger_db: LedgerDatabase,
    outbox_endpoint: OutboxEndpoint,
) -> dg.Output:
    """Deliver PENDING outbox rows; mark them SENT, or FAILED with attempts and last error."""
    if not outbox_endpoint.url:
        raise dg.Failure(
            description="OUTBOX_RELAY_URL is not set: where should the outbox be delivered?",
            allow_retries=False,
        )
    ledger_db.migrate()
    outcome = relay_outbox(
        ledger_db.connect,
        outbox_endpoint.url,
        outbox_endpoint.token,
        RelayOptions(
            batch_size=config.batch_size,
            max_retries=config.max_retries,
            # The relay's HTTP requests wait and retry as a source's pages do.
            retry_delay_ms=source.retry_delay_ms,
            timeout_seconds=source.source_timeout_seconds,
            max_retry_after=source.source_max_retry_after,
            include_failed=config.include_failed,
            source_id=config.source_id,
            limit=config.limit,
        ),
    )
    context.log.info(
        f"dual-ledger relay: {outcome.sent} sent, {outcome.failed} failed in {outcome.batches} "
        f"batch(es), {outcome.requests} request(s)"
    )
    metadata = {
        "sent": dg.MetadataValue.int(outcome.sent),
        "failed": dg.MetadataValue.int(outcome.failed),
        "batches": dg.MetadataValue.int(outcome.batches),
        "requests": dg.MetadataValue.int(outcome.requests),
    }
    if outcome.failed:
        raise dg.Failure(
            description=f"{outcome.failed} outbox row(s) FAILED: {outcome.errors[-1]}",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.Output(None, metadata=metadata)


@dg.job(
    description="Deliver the dual-ledger outbox (PENDING → SENT, or FAILED with the last error)."
)
def dual_ledger_outbox_relay_job() -> None:
    relay_dual_ledger_outbox()


DUAL_LEDGER_CHECKS = [dual_ledger_consistency]
DUAL_LEDGER_JOBS = [dual_ledger_outbox_relay_job]
