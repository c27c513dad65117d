"""The ledger entry contract's fields, as every source and every reject names them."""

from __future__ import annotations

CANONICAL_FIELDS = (
    "ledgerId",
    "debitAccountId",
    "creditAccountId",
    "amount",
    "currencyCode",
    "assetType",
    "transactionType",
    "referenceId",
    "timestampUtc",
    "fxRate",
    "metadata",
)
# Fields beyond the seed's that some sources give; a staged row or a reject's raw values carry
# them when given. amountMinor: the amount in the currency's minor units (cents, yen, fils), as
# ledgers that store an integer keep it: amount = amountMinor / 10^exponent (issue 19).
OPTIONAL_FIELDS = ("amountMinor",)
# Every field a source column can feed: the seed's, then the optional ones.
SOURCE_FIELDS = (*CANONICAL_FIELDS, *OPTIONAL_FIELDS)
# Without these a row cannot be an entry at all; a source missing one fails as a whole.
REQUIRED_FIELDS = ("debitAccountId", "creditAccountId", "currencyCode", "timestampUtc")
# …and without one of these: the amount, as a decimal or in minor units.
AMOUNT_FIELDS = ("amount", "amountMinor")


def raw_fields(values: dict[str, object]) -> dict[str, object]:
    """A row's fields as a reject's `raw_row` records them: every field of the seed's contract,
    and an optional field only when the row gave it."""
    return {
        name: values.get(name)
        for name in SOURCE_FIELDS
        if name not in OPTIONAL_FIELDS or values.get(name) is not None
    }
