"""The ledger entry contract: the seed's `LedgerEntrySource`, as one Pandera DataFrameModel.

Every rule a transformed row must meet before it may be posted is stated here, each as a named,
vectorized check; `validation.py` applies every one to every row, so a failing row gets every
reason it fails (the same verdicts as `LedgerEntrySource.validate(df, lazy=True)`). The
transformation stage fills the helper columns the cross-field rules read (the accounts'
currencies, the credit amount, the metadata verdict); it never decides validity itself.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
from pandera.typing import Series

from ledger_backfill_dagster.entries.amounts import (
    ZERO,
    has_no_minor_unit,
    integer_digits,
    plain_positive,
    significant_fraction_digits,
    whole_positive,
)
from ledger_backfill_dagster.entries.currencies import minor_units_table, places_table
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    EMPTY,
    LATER_THAN_RUN_START,
    NONEXISTENT_LOCAL,
    UNPARSEABLE,
)

ASSET_TYPES = ("fiat", "cbdc", "commodity", "security")
UNIT_RATE = r"0*1(?:\.0+)?"
# What the transformation stage writes in `metadata_problem` when the metadata cannot be stored.
METADATA_NOT_JSON = "not valid JSON"
METADATA_NUL = "\\u0000, a NUL character"
METADATA_SURROGATE = "an unpaired UTF-16 surrogate escape"
METADATA_TOO_DEEP = "nested too deeply to check"
METADATA_NUMBER_RANGE = (
    "a number outside NUMERIC's range (131,072 digits before the point, 16,383 after)"
)
METADATA_UNSTORABLE = (METADATA_NUL, METADATA_SURROGATE, METADATA_NUMBER_RANGE)
MAX_INTEGER_DIGITS = 24
# PostgreSQL refuses a B-tree index entry over 2,704 bytes (a third of an 8 kB page), and
# (ledger_id, reference_id) is the ledger's unique key and the outbox's index: bounded together
# well below it, so the database never refuses a row the contract admitted (a few kilobytes of
# referenceId once failed a whole day). Bytes of UTF-8, not characters.
MAX_LEDGER_ID_BYTES = 256
MAX_REFERENCE_ID_BYTES = 2048
# Text the ledger does not index, bounded all the same: a transaction type is a short code.
MAX_TEXT_BYTES = 1024
TEXT_FIELDS = (
    "ledger_id",
    "debit_account_id",
    "credit_account_id",
    "asset_type",
    "transaction_type",
    "reference_id",
    "currency_code",
)

StringSeries = Series[pd.StringDtype]
# Text columns are Arrow-backed: every string check below then runs in Arrow's compute kernels
# instead of a Python loop over the rows (`as_contract_frame` converts a frame read back).
ARROW_STRING = pd.StringDtype("pyarrow")


# Any, as pandera's own Field returns: the field object stands in for the column's annotation.
def _text(nullable: bool = False) -> Any:
    return pa.Field(nullable=nullable, dtype_kwargs={"storage": "pyarrow", "na_value": pd.NA})


def _flag(values: pd.Series) -> pd.Series:
    """Checks must answer True/False for every row; a missing value never passes."""
    return values.fillna(False).astype(bool)


def _utf8_bytes(text: pd.Series) -> pd.Series:
    """Each value's length in UTF-8 bytes (missing stays missing), in Arrow's kernels."""
    lengths = pc.binary_length(pa_arrow.array(text.astype(ARROW_STRING).array))
    return pd.Series(lengths.to_pandas(types_mapper=pd.ArrowDtype), index=text.index)


class LedgerEntrySource(pa.DataFrameModel):
    """One row per ledger entry, ready to post."""

    source_row_id: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    ledger_id: StringSeries = _text()
    debit_account_id: StringSeries = _text()
    credit_account_id: StringSeries = _text()
    # Missing only when the row gave no amount but an amountMinor the transformation could not
    # turn into one (the amountMinor rules then say why).
    amount: StringSeries = _text(nullable=True)
    amount_minor: StringSeries = _text(nullable=True)
    currency_code: StringSeries = _text()
    asset_type: StringSeries = _text()
    transaction_type: StringSeries = _text()
    reference_id: StringSeries = _text()
    # Missing only for a row a reader kept in its day without a readable timestamp (API, SCB);
    # the timestamp rules below then say why, with `timestamp_problem`'s words (issue 20).
    timestamp_utc: Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=True, dtype_kwargs={"unit": "us", "tz": "UTC"}
    )
    fx_rate: StringSeries = _text(nullable=True)
    metadata: StringSeries = _text(nullable=True)
    # Helper columns filled by the transformation stage.
    debit_account_currency: StringSeries = _text(nullable=True)
    credit_account_currency: StringSeries = _text(nullable=True)
    credit_amount: StringSeries = _text(nullable=True)
    amount_minor_value: StringSeries = _text(nullable=True)
    metadata_problem: StringSeries = _text(nullable=True)
    timestamp_problem: StringSeries = _text(nullable=True)

    class Config:
        strict = False
        coerce = False

    @pa.check("ledger_id", name="ledgerId: empty")
    def ledger_id_present(cls, s: pd.Series) -> pd.Series:
        return _flag(s.str.len() > 0)

    @pa.check("debit_account_id", name="debitAccountId: empty")
    def debit_present(cls, s: pd.Series) -> pd.Series:
        return _flag(s.str.len() > 0)

    @pa.check("credit_account_id", name="creditAccountId: empty")
    def credit_present(cls, s: pd.Series) -> pd.Series:
        return _flag(s.str.len() > 0)

    @pa.check("transaction_type", name="transactionType: empty")
    def transaction_type_present(cls, s: pd.Series) -> pd.Series:
        return _flag(s.str.len() > 0)

    @pa.check("reference_id", name="referenceId: empty")
    def reference_present(cls, s: pd.Series) -> pd.Series:
        return _flag(s.str.len() > 0)

    @pa.check("ledger_id", name=f"ledgerId: longer than {MAX_LEDGER_ID_BYTES} bytes")
    def ledger_id_bounded(cls, s: pd.Series) -> pd.Series:
        return _flag(_utf8_bytes(s) <= MAX_LEDGER_ID_BYTES)

    @pa.check("reference_id", name=f"referenceId: longer than {MAX_REFERENCE_ID_BYTES} bytes")
    def reference_bounded(cls, s: pd.Series) -> pd.Series:
        return _flag(_utf8_bytes(s) <= MAX_REFERENCE_ID_BYTES)

    @pa.check("transaction_type", name=f"transactionType: longer than {MAX_TEXT_BYTES} bytes")
    def transaction_type_bounded(cls, s: pd.Series) -> pd.Series:
        return _flag(_utf8_bytes(s) <= MAX_TEXT_BYTES)

    @pa.check("asset_type", name=f"assetType: not one of {', '.join(ASSET_TYPES)}")
    def asset_type_known(cls, s: pd.Series) -> pd.Series:
        return _flag(s.isin(ASSET_TYPES))

    @pa.check("amount", name="amount: not a plain decimal greater than zero")
    def amount_plain_positive(cls, s: pd.Series) -> pd.Series:
        return s.isna() | plain_positive(s)

    # Leading zeros are spelling, not size (issue 19): `007.50` has one digit before the point.
    @pa.check("amount", name=f"amount: more than {MAX_INTEGER_DIGITS} digits before the point")
    def amount_not_huge(cls, s: pd.Series) -> pd.Series:
        return s.isna() | _flag(integer_digits(s) <= MAX_INTEGER_DIGITS)

    @pa.check("amount_minor", name="amountMinor: not a whole number greater than zero")
    def amount_minor_whole_positive(cls, s: pd.Series) -> pd.Series:
        return s.isna() | whole_positive(s)

    @pa.check("currency_code", name="currencyCode: not an ISO 4217 currency")
    def currency_known(cls, s: pd.Series) -> pd.Series:
        return _flag(s.isin(list(minor_units_table())))

    @pa.check("fx_rate", name="fxRate: not a plain decimal greater than zero")
    def fx_rate_plain_positive(cls, s: pd.Series) -> pd.Series:
        return s.isna() | plain_positive(s)

    @pa.check("metadata_problem", name="metadata: not a JSON object")
    def metadata_is_object(cls, s: pd.Series) -> pd.Series:
        return s.isna() | _flag(s.isin(METADATA_UNSTORABLE))

    @pa.check("metadata_problem", name="metadata: holds text JSONB cannot store")
    def metadata_storable(cls, s: pd.Series) -> pd.Series:
        return ~_flag(s.isin(METADATA_UNSTORABLE))

    # By value, not by spelling (issue 19): trailing zeros state nothing, so `10.000` USD is
    # ten dollars and posts (stored `10.00`); `0.0050` USD is half a cent and does not.
    @pa.dataframe_check(name="amount: more fractional digits than the currency's minor units")
    def amount_within_minor_units(cls, df: pd.DataFrame) -> pd.Series:
        allowed = df["currency_code"].map(places_table())
        known = allowed.notna() & plain_positive(df["amount"])
        return ~known | _flag(significant_fraction_digits(df["amount"]) <= allowed.fillna(0))

    # The timestamp rules: the extract stage's reasons (timestamps.py), given by the contract to
    # a row a reader staged in its day without a timestamp, so it meets the reason a CSV row
    # with the same text meets (issue 20). A missing timestamp without a stated problem is empty.
    @pa.dataframe_check(name=EMPTY)
    def timestamp_given(cls, df: pd.DataFrame) -> pd.Series:
        problem = df["timestamp_problem"]
        stated = _flag(problem.notna() & (problem != EMPTY))
        return df["timestamp_utc"].notna() | stated

    @pa.dataframe_check(name=UNPARSEABLE)
    def timestamp_readable(cls, df: pd.DataFrame) -> pd.Series:
        return _timestamp_not(df, UNPARSEABLE)

    @pa.dataframe_check(name=NONEXISTENT_LOCAL)
    def timestamp_local_time_exists(cls, df: pd.DataFrame) -> pd.Series:
        return _timestamp_not(df, NONEXISTENT_LOCAL)

    @pa.dataframe_check(name=LATER_THAN_RUN_START)
    def timestamp_not_future(cls, df: pd.DataFrame) -> pd.Series:
        return _timestamp_not(df, LATER_THAN_RUN_START)

    @pa.dataframe_check(name=BEFORE_START_DATE)
    def timestamp_not_before_start(cls, df: pd.DataFrame) -> pd.Series:
        return _timestamp_not(df, BEFORE_START_DATE)

    @pa.dataframe_check(name="amount: missing")
    def amount_given(cls, df: pd.DataFrame) -> pd.Series:
        return df["amount"].notna() | df["amount_minor"].notna()

    @pa.dataframe_check(
        name=f"amountMinor: more than {MAX_INTEGER_DIGITS} digits before the point in major units"
    )
    def amount_minor_not_huge(cls, df: pd.DataFrame) -> pd.Series:
        value = df["amount_minor_value"]
        return value.isna() | _flag(integer_digits(value) <= MAX_INTEGER_DIGITS)

    @pa.dataframe_check(name="amountMinor: the currency has no minor unit in ISO 4217")
    def amount_minor_has_unit(cls, df: pd.DataFrame) -> pd.Series:
        return df["amount_minor"].isna() | ~has_no_minor_unit(df["currency_code"])

    # Both given: they must state one value. `amount` is compared as the transformation
    # spelled it for the ledger, `amount_minor_value` is amountMinor's value spelled the same.
    @pa.dataframe_check(name="amount and amountMinor: state different values")
    def amount_and_minor_agree(cls, df: pd.DataFrame) -> pd.Series:
        both = (
            df["amount_minor"].notna()
            & df["amount_minor_value"].notna()
            & plain_positive(df["amount"])
        )
        return ~both | _flag(df["amount"] == df["amount_minor_value"])

    @pa.dataframe_check(name="debitAccountId: no such account")
    def debit_account_exists(cls, df: pd.DataFrame) -> pd.Series:
        return (df["debit_account_id"].fillna("") == "") | df["debit_account_currency"].notna()

    @pa.dataframe_check(name="creditAccountId: no such account")
    def credit_account_exists(cls, df: pd.DataFrame) -> pd.Series:
        return (df["credit_account_id"].fillna("") == "") | df["credit_account_currency"].notna()

    @pa.dataframe_check(name="debitAccountId and creditAccountId are the same account")
    def accounts_differ(cls, df: pd.DataFrame) -> pd.Series:
        return _flag(df["debit_account_id"] != df["credit_account_id"])

    @pa.dataframe_check(name="currencyCode: differs from the debit account's currency")
    def currency_matches_debit_account(cls, df: pd.DataFrame) -> pd.Series:
        known = df["debit_account_currency"].notna()
        return ~known | _flag(df["currency_code"] == df["debit_account_currency"])

    @pa.dataframe_check(name="fxRate: required, the credit account is in another currency")
    def fx_rate_when_crossing(cls, df: pd.DataFrame) -> pd.Series:
        crossing = _flag(df["credit_account_currency"] != df["currency_code"])
        return ~crossing | df["fx_rate"].notna()

    @pa.dataframe_check(name="fxRate: given, but both accounts are in the same currency")
    def fx_rate_only_when_crossing(cls, df: pd.DataFrame) -> pd.Series:
        same = _flag(df["credit_account_currency"] == df["currency_code"])
        unit_rate = _flag(df["fx_rate"].str.fullmatch(UNIT_RATE))
        return ~same | df["fx_rate"].isna() | unit_rate

    @pa.dataframe_check(name="text fields: contain a NUL character")
    def no_nul_characters(cls, df: pd.DataFrame) -> pd.Series:
        ok = pd.Series(True, index=df.index)
        for column in (*TEXT_FIELDS, "amount", "amount_minor", "fx_rate", "metadata"):
            ok &= ~_flag(df[column].str.contains("\x00", regex=False))
        return ok

    @pa.dataframe_check(name="creditAmount: converts to zero in the credit currency")
    def credit_amount_positive(cls, df: pd.DataFrame) -> pd.Series:
        computed = df["credit_amount"]
        return computed.isna() | _flag(~computed.str.fullmatch(ZERO))


def _timestamp_not(df: pd.DataFrame, reason: str) -> pd.Series:
    """Passes unless the row has no timestamp for this reason."""
    return df["timestamp_utc"].notna() | ~_flag(df["timestamp_problem"] == reason)


TIMESTAMP_RULES = (EMPTY, UNPARSEABLE, NONEXISTENT_LOCAL, LATER_THAN_RUN_START, BEFORE_START_DATE)


def as_contract_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the contract's text columns Arrow-backed (Parquet reads them back as
    Python-backed strings); other columns untouched."""
    converted = {
        name: frame[name].astype(ARROW_STRING)
        for name, column in LedgerEntrySource.to_schema().columns.items()
        if name in frame.columns
        and column.dtype.type == ARROW_STRING
        and frame[name].dtype != ARROW_STRING
    }
    return frame.assign(**converted) if converted else frame
