"""The transformation rules and the contract's verdicts, without a database: FX rounding,
deterministic reference ids, metadata, timestamps, layouts, mappings, and agreement between the
vectorized rule verdicts and Pandera's own lazy validation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.contract import LedgerEntrySource, as_contract_frame
from ledger_backfill_dagster.entries.currencies import convert, is_currency, places
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    EMPTY,
    LATER_THAN_RUN_START,
    NONEXISTENT_LOCAL,
    UNPARSEABLE,
    parse_utc,
)
from ledger_backfill_dagster.entries.transform import (
    TransformRules,
    generated_reference,
    generated_references,
    load_mapping,
    transform,
)
from ledger_backfill_dagster.entries.validation import ContractError, reasons_by_row, split
from ledger_backfill_dagster.sources.csv_reader import (
    HeaderError,
    MalformedLine,
    Record,
    read_records,
)
from ledger_backfill_dagster.sources.csv_source import CsvSource
from ledger_backfill_dagster.sources.layout import LayoutError, detect_layout, load_column_map
from ledger_backfill_dagster_tests.entries import test_contract_corpus as corpus

RULES = TransformRules(
    default_ledger_id="CORPUS",
    account_map=corpus.ACCOUNT_MAP,
    transaction_type_map=corpus.TRANSACTION_TYPE_MAP,
    account_currencies=dict(corpus.ACCOUNTS),
)


def staged(rows: list[dict[str, str]], timezone: str = "UTC", extras: list | None = None):
    """A staged frame as the CSV source hands it on (raw text, parsed UTC timestamp)."""
    frame = pd.DataFrame(
        {
            "source_row_id": pd.array(range(1, len(rows) + 1), dtype="Int64"),
            "source_file": pd.array(["x.csv"] * len(rows), dtype="string"),
            "line_number": pd.array(range(2, len(rows) + 2), dtype="Int64"),
            **{f: pd.array([r.get(f, "") for r in rows], dtype="string") for f in CANONICAL_FIELDS},
            "extra_columns": pd.array(
                [None if e is None else json.dumps(e) for e in (extras or [None] * len(rows))],
                dtype="string",
            ),
        }
    )
    parsed, _ = parse_utc(frame["timestampUtc"], timezone)
    frame["timestamp_utc"] = parsed
    return frame


def base(**changes: str) -> dict[str, str]:
    return {**corpus.valid_row(1, "2024-01-02"), **changes}


# --- the contract -----------------------------------------------------------------------------


def test_rule_verdicts_agree_with_pandera_lazy_validation() -> None:
    """The fast path must say exactly what Pandera says, row by row, rule by rule."""
    cases = [c for c in corpus.corpus() if c.fields is not None]
    rows = [{**corpus.valid_row(n, "2024-01-02"), **c.fields} for n, c in enumerate(cases)]
    frame = as_contract_frame(transform(staged(rows, "America/New_York"), RULES))
    frame = frame[frame["timestamp_utc"].notna()].reset_index(drop=True)  # as the source does
    ours = reasons_by_row(frame)
    theirs: dict[int, set[str]] = {}
    try:
        LedgerEntrySource.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for index, check, column in errors.failure_cases[["index", "check", "column"]].itertuples(
            index=False
        ):
            name = f"{column}: missing" if check == "not_nullable" else check
            theirs.setdefault(int(index), set()).add(name)
    assert len(ours) >= 40
    assert {i: set(r) for i, r in ours.items()} == theirs


def test_every_reason_of_a_row_is_given_in_rule_order() -> None:
    frame = transform(
        staged([base(amount="-1", currencyCode="ABC", assetType="x", transactionType="")]), RULES
    )
    _, rejects = split(frame)
    assert rejects["reasons"].iloc[0] == [
        "amount: not a plain decimal greater than zero",
        "currencyCode: not an ISO 4217 currency",
        "assetType: not one of fiat, cbdc, commodity, security",
        "transactionType: empty",
        "currencyCode: differs from the debit account's currency",
        "fxRate: required, the credit account is in another currency",
    ]


def test_a_frame_with_the_wrong_shape_is_a_defect_not_a_reject() -> None:
    frame = transform(staged([base()]), RULES)
    with pytest.raises(ContractError, match="lacks"):
        split(frame.drop(columns=["amount"]))
    with pytest.raises(ContractError, match="timestamp_utc"):
        split(frame.assign(timestamp_utc=frame["timestamp_utc"].astype("datetime64[ns, UTC]")))


def test_valid_rows_keep_the_exact_value_spelled_as_the_ledger_stores_it() -> None:
    valid, rejects = split(transform(staged([base(amount=" 0010.50 ", currencyCode="usd")]), RULES))
    assert rejects.empty
    assert valid.loc[0, "amount"] == "10.50"  # issue 19: by value, in the currency's places
    assert valid.loc[0, "currency_code"] == "USD"
    assert Decimal(valid.loc[0, "credit_amount"]) == Decimal("10.50")


# --- FX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "rate", "currency", "expected"),
    [
        ("1.00", "2.5", "JPY", "2"),  # half-even: 2.5 → 2
        ("3.00", "2.5", "JPY", "8"),  # 7.5 → 8
        ("10.05", "162.3456", "JPY", "1632"),
        ("1", "0.3775", "BHD", "0.378"),  # 0.3775 → 0.378 (8 is even)
        ("1", "0.3765", "BHD", "0.376"),
        ("0.015", "1", "USD", "0.02"),
        ("0.025", "1", "USD", "0.02"),
        ("123456789012345678901234.99", "1.000000001", "EUR", "123456789135802467913580.67"),
        ("1", "0.0000000000000000015", "XAU", "0.000000000000000002"),  # N.A. → 18 places
    ],
)
def test_fx_credit_side_rounds_half_even(amount, rate, currency, expected) -> None:
    assert convert(Decimal(amount), Decimal(rate), currency) == Decimal(expected)
    assert format(convert(Decimal(amount), Decimal(rate), currency), "f") == expected


def test_credit_amount_column_for_fx_and_same_currency_rows() -> None:
    frame = transform(
        staged(
            [
                base(
                    debitAccountId="E1",
                    creditAccountId="J1",
                    currencyCode="EUR",
                    amount="1.00",
                    fxRate="2.5",
                ),
                base(amount="7.25"),
                base(creditAccountId="NOPE"),
                base(
                    debitAccountId="E1",
                    creditAccountId="J1",
                    currencyCode="EUR",
                    amount="x",
                    fxRate="2",
                ),
            ]
        ),
        RULES,
    )
    assert frame["credit_amount"].tolist()[:2] == ["2", "7.25"]
    assert frame["credit_amount"].isna().tolist() == [False, False, True, True]
    assert frame["credit_currency_code"].tolist()[:2] == ["JPY", "USD"]


def test_currencies_come_from_iso_4217_with_test_codes_refused() -> None:
    assert places("USD") == 2 and places("JPY") == 0 and places("BHD") == 3
    assert places("XAU") == 18  # ISO says N.A.
    assert is_currency("CLF") and places("CLF") == 4
    assert not is_currency("XTS") and not is_currency("XXX") and not is_currency("usd")


# --- reference ids ----------------------------------------------------------------------------


def test_generated_reference_ids_depend_only_on_canonical_content() -> None:
    rows = [
        base(referenceId="", amount="10.5", metadata='{"b": 2, "a": 1}'),
        base(
            referenceId="  ",
            amount=" 10.50 ",
            currencyCode="usd",
            debitAccountId=" U1 ",
            assetType="FIAT",
            timestampUtc="2024-01-02T15:01:00+05:00",
            metadata='{ "a":1,"b":2 }',
        ),
        base(referenceId="", amount="10.51", metadata='{"b": 2, "a": 1}'),
        base(
            referenceId="",
            amount="10.5",
            debitAccountId="SRC-U1",
            creditAccountId="U3",
            metadata='{"a": 1, "b": 2}',
        ),
        base(
            referenceId="",
            amount="10.5",
            debitAccountId="U1",
            creditAccountId="U3",
            metadata='{"a": 1, "b": 2}',
        ),
    ]
    rows[0]["timestampUtc"] = rows[2]["timestampUtc"] = "2024-01-02T10:01:00Z"
    rows[3]["timestampUtc"] = rows[4]["timestampUtc"] = "2024-01-02T10:01:00Z"
    ids = transform(staged(rows), RULES)["reference_id"].tolist()
    again = transform(staged(list(reversed(rows))), RULES)["reference_id"].tolist()
    alone = [transform(staged([row]), RULES)["reference_id"].iloc[0] for row in rows[:2]]
    assert alone[0] == alone[1] == ids[0]  # cosmetic differences and position do not matter
    assert ids[1] != ids[0]  # but in one export, a second identical row is a second payment
    assert ids[0] != ids[2]  # content does
    assert ids[3] == ids[4]  # ids are generated after account mapping
    assert sorted(again) == sorted(ids)
    assert all(i.startswith("BACKFILL-") and len(i) == 41 for i in ids)


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "ledger_id": st.one_of(st.none(), TEXT),
                "debit_account_id": TEXT,
                "credit_account_id": st.sampled_from(["U1", "U2", "é"]),
                "amount": st.one_of(st.none(), TEXT, st.decimals(allow_nan=False).map(str)),
                "currency_code": TEXT,
                "asset_type": st.sampled_from(["fiat", "cbdc"]),
                "transaction_type": TEXT,
                "timestamp_utc": st.one_of(
                    st.none(),
                    st.datetimes(
                        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)
                    ).map(lambda d: pd.Timestamp(d, tz="UTC")),
                ),
                "fx_rate": st.one_of(st.none(), st.sampled_from(["1", "1.50", "x", "1e2"])),
                "metadata": st.one_of(
                    st.none(),
                    st.dictionaries(TEXT, st.one_of(st.integers(), TEXT), max_size=3).map(
                        json.dumps
                    ),
                    TEXT,
                ),
            }
        ),
        min_size=1,
        max_size=20,
    )
)
def test_vectorized_reference_ids_equal_the_definition(rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if column != "timestamp_utc":
            frame[column] = frame[column].astype("string")
    frame["timestamp_utc"] = pd.to_datetime(frame["timestamp_utc"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    expected = [generated_reference(row) for row in frame.itertuples(index=False)]
    assert list(generated_references(frame)) == expected


def test_given_reference_ids_are_kept_verbatim() -> None:
    frame = transform(staged([base(referenceId=" a'b\"c; -- ")]), RULES)
    assert frame["reference_id"].tolist() == [" a'b\"c; -- "]
    assert not frame["reference_generated"].iloc[0]


# --- metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", None),
        ("  ", None),
        ('{"a": [1, {"b": null}]}', None),
        ('{"a": 1e400}', None),  # PostgreSQL's numeric takes it
        ("[1]", "a JSON array"),
        ('"x"', "a JSON string"),
        ("1.5", "a JSON number"),
        ("true", "a JSON boolean"),
        ("null", "JSON null"),
        ("{bad", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": Infinity}', "not valid JSON"),
        ('{"a": "x\\u0000"}', "\\u0000, a NUL character"),
        ('{"x\\u0000": 1}', "\\u0000, a NUL character"),
        ('{"a": "\\udc00"}', "an unpaired UTF-16 surrogate escape"),
        ('{"a": "\\ud83d\\ude00"}', None),  # a proper pair is an emoji
        ('{"a": "\\\\u0000"}', None),  # an escaped backslash, then text
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested too deeply to check"),
    ],
)
def test_metadata_must_be_a_storable_json_object(text: str, problem: str | None) -> None:
    frame = transform(staged([base(metadata=text)]), RULES)
    found = frame["metadata_problem"].iloc[0]
    assert (None if found is pd.NA else found) == problem
    if problem is None and text.strip():
        assert json.loads(frame["metadata"].iloc[0]) == json.loads(text)


def test_extra_columns_fold_into_metadata_and_the_row_metadata_wins() -> None:
    frame = transform(
        staged(
            [base(metadata='{"memo": "row"}'), base(metadata=""), base(metadata="[1]")],
            extras=[{"memo": "extra", "branch": "NYC"}, {"branch": "LDN"}, {"branch": "X"}],
        ),
        RULES,
    )
    assert json.loads(frame["metadata"].iloc[0]) == {"memo": "row", "branch": "NYC"}
    assert json.loads(frame["metadata"].iloc[1]) == {"branch": "LDN"}
    assert (
        frame["metadata"].iloc[2] is pd.NA and frame["metadata_problem"].iloc[2] == "a JSON array"
    )


# --- defaults and mappings --------------------------------------------------------------------


def test_defaults_and_mappings() -> None:
    frame = transform(
        staged(
            [
                base(ledgerId="", assetType="", transactionType="xfer", debitAccountId="LEGACY 9"),
                base(ledgerId=" SOVEREIGN ", assetType=" Commodity ", transactionType="XFER"),
            ]
        ),
        RULES,
    )
    assert frame["ledger_id"].tolist() == ["CORPUS", "SOVEREIGN"]
    assert frame["asset_type"].tolist() == ["fiat", "commodity"]
    assert frame["transaction_type"].tolist() == ["TRANSFER", "XFER"]  # mapping is exact-case
    assert frame["debit_account_id"].tolist() == ["U3", "U1"]


def test_mapping_files(tmp_path: Path) -> None:
    good = tmp_path / "map.csv"
    good.write_bytes(b"\xef\xbb\xbfsourceId,ledgerId\r\n OLD-1 , NEW-1 \r\n\r\nOLD-2,NEW-2\r\n")
    assert load_mapping(str(good)) == {"OLD-1": "NEW-1", "OLD-2": "NEW-2"}
    assert load_mapping(None) == {}
    bad = tmp_path / "bad.csv"
    bad.write_text("sourceId,ledgerId\nOLD-1\n")
    with pytest.raises(ValueError, match="line 2"):
        load_mapping(str(bad))


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "utc", "reason"),
    [
        ("2024-01-02T10:00:00Z", "2024-01-02T10:00:00+00:00", None),
        ("2024-01-02T10:00:00z", "2024-01-02T10:00:00+00:00", None),
        ("2024-01-02 10:00:00+02:00", "2024-01-02T08:00:00+00:00", None),
        ("2024-01-02T10:00:00+0530", "2024-01-02T04:30:00+00:00", None),
        ("2024-01-02T10:00:00-05", "2024-01-02T15:00:00+00:00", None),
        ("2024-01-02T10:00:00.1234567Z", "2024-01-02T10:00:00.123456+00:00", None),
        ("2024-01-02T10:00", "2024-01-02T15:00:00+00:00", None),  # naive: America/New_York
        ("2024-07-02T10:00:00", "2024-07-02T14:00:00+00:00", None),  # summer time
        ("2024-01-02", "2024-01-02T05:00:00+00:00", None),
        (" 2024-01-02T10:00:00Z ", "2024-01-02T10:00:00+00:00", None),
        ("", None, EMPTY),
        ("   ", None, EMPTY),
        ("2024-01-02T10:00:00 UTC", None, UNPARSEABLE),
        ("02/01/2024 10:00", None, UNPARSEABLE),
        ("1704189600", None, UNPARSEABLE),
        ("2024-13-01T00:00:00Z", None, UNPARSEABLE),
        ("2024-03-10T02:30:00", None, NONEXISTENT_LOCAL),
        ("2024-11-03T01:30:00", None, NONEXISTENT_LOCAL),
        ("3000-01-01T00:00:00Z", None, LATER_THAN_RUN_START),
        ("1066-10-14T09:00:00", None, BEFORE_START_DATE),
    ],
)
def test_timestamps(text: str, utc: str | None, reason: str | None) -> None:
    parsed, reasons = parse_utc(pd.Series([text], dtype="string"), "America/New_York")
    if utc is None:
        assert parsed.isna().all()
    else:
        assert parsed.iloc[0].isoformat() == utc
    assert (None if pd.isna(reasons.iloc[0]) else reasons.iloc[0]) == reason


# --- reading -----------------------------------------------------------------------------------


def test_reader_keeps_crlf_inside_quotes_and_refuses_an_unreadable_header(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b'a,b,c\r\n1,"x\r\ny",3\r\n4,"p\nq,r",5,6\n7,8,9\n')
    header, items = read_records(path)
    items = list(items)
    assert items[0] == Record(2, ["1", "x\r\ny", "3"])
    assert isinstance(items[1], MalformedLine) and items[1].line_number == 4
    assert "expected 3, found 4" in items[1].reason  # closed quote, wrong width: one record
    assert items[2] == Record(6, ["7", "8", "9"])
    # pandas on Linux leaves a bare CR unquoted; with a quoted field elsewhere it is still data
    path.write_bytes(b'a,b,c\n1\r2,"x\ny",3\n4,5,6\n')
    assert list(read_records(path)[1]) == [
        Record(2, ["1\r2", "x\ny", "3"]),
        Record(4, ["4", "5", "6"]),
    ]
    path.write_bytes(b"a,b\r1,2\r3,4")  # classic Mac line endings: one line
    with pytest.raises(HeaderError, match="cannot be read"):
        read_records(path)


def test_a_row_rejected_as_future_gets_its_partition_once_its_time_has_come(
    tmp_path: Path,
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    rows = [base(timestampUtc=soon.isoformat()), base(timestampUtc="2024-01-02T10:00:00Z")]
    path = tmp_path / "x.csv"
    path.write_text(
        ",".join(CANONICAL_FIELDS)
        + "\n"
        + "".join(",".join(r[f] for f in CANONICAL_FIELDS) + "\n" for r in rows)
    )
    source = CsvSource(spec=str(path), start_date="2024-01-01")
    day = soon.strftime("%Y-%m-%d")
    first = source.extract([day], tmp_path / "staging")
    assert first.unpartitioned_rejects["reasons"].tolist() == [[LATER_THAN_RUN_START]]
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    second = source.extract([day], tmp_path / "staging")
    assert second.unpartitioned_rejects.empty
    assert second.rows_by_partition[day] == 1


# --- layouts ----------------------------------------------------------------------------------


def test_layouts(tmp_path: Path) -> None:
    canonical = detect_layout(list(CANONICAL_FIELDS) + ["note"])
    assert canonical.name == "canonical" and canonical.extra_columns == ["note"]
    legacy_columns = [
        "ledger", "debit_account", "credit_account", "amount", "currency", "asset_type",
        "txn_type", "reference_id", "timestamp", "fx_rate", "branch", "memo",
    ]  # fmt: skip
    legacy = detect_layout(legacy_columns)
    assert legacy.name == "legacy" and legacy.extra_columns == ["branch", "memo"]
    assert legacy.column_for("transactionType") == "txn_type"
    assert legacy.column_for("metadata") is None
    declared_file = tmp_path / "columns.json"
    declared_file.write_text(
        json.dumps(
            {
                "From": "debitAccountId",
                "To": "creditAccountId",
                "Value": "amount",
                "Ccy": "currencyCode",
                "When": "timestampUtc",
            }
        )  # fmt: skip
    )
    declared = detect_layout(
        ["From", "To", "Value", "Ccy", "When", "Notes"], load_column_map(str(declared_file))
    )
    assert declared.name == "declared" and declared.extra_columns == ["Notes"]
    with pytest.raises(LayoutError, match="fit no known layout"):
        detect_layout(["From", "To", "Value"])
    with pytest.raises(LayoutError, match="duplicate"):
        detect_layout(list(CANONICAL_FIELDS) + ["amount"])
    declared_file.write_text(json.dumps({"From": "debitAccount"}))
    with pytest.raises(LayoutError, match="unknown canonical fields"):
        load_column_map(str(declared_file))
