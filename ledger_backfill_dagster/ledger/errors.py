"""Named failures of the posting path; each carries the rows or accounts it concerns."""

from __future__ import annotations

from ledger_backfill_dagster.lib.errors import TerminalError


class PostingError(TerminalError):
    """A permanent failure: retrying the same batch cannot succeed."""


class DuplicateEntriesError(PostingError):
    def __init__(self, partition_key: str, references: list[tuple[str, str, int]]) -> None:
        self.references = references
        shown = ", ".join(f"{ledger}/{ref} (line {line})" for ledger, ref, line in references[:20])
        more = f" and {len(references) - 20} more" if len(references) > 20 else ""
        super().__init__(
            f"partition {partition_key}: {len(references)} duplicate reference(s) already in the "
            f"ledger and SKIP_DUPLICATES=false: {shown}{more}"
        )


class UnknownAccountsError(PostingError):
    def __init__(self, partition_key: str, accounts: list[str]) -> None:
        self.accounts = accounts
        super().__init__(f"partition {partition_key}: accounts missing at posting time: {accounts}")


class BalanceDriftError(PostingError):
    def __init__(self, partition_key: str, drift: list[tuple[str, str, str]]) -> None:
        self.drift = drift
        shown = "; ".join(
            f"{a}: stored {actual}, entries sum to {expected}" for a, expected, actual in drift[:10]
        )
        super().__init__(
            f"partition {partition_key}: {len(drift)} account balance(s) no longer equal the sum "
            f"of their entries: {shown}"
        )


class PartitionBusyError(PostingError):
    def __init__(self, source_id: str, partition_key: str) -> None:
        super().__init__(
            f"partition {partition_key} of {source_id} is being posted by another run right now"
        )


class PausedError(TerminalError):
    """The backfill stopped cleanly after a batch because a pause was requested."""


class InvariantError(PostingError):
    """The posting statement did not account for every staged row: nothing is committed."""
