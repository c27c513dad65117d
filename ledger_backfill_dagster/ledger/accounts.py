"""The chart of accounts: load ACCOUNTS_FILE into bank_accounts, read account currencies."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ledger_backfill_dagster.currencies import is_currency
from ledger_backfill_dagster.settings import FALSE_WORDS, TRUE_WORDS

# Account types that may carry a negative balance (the ledger's own side of every entry).
NEGATIVE_BY_TYPE = {"income", "equity", "liability", "clearing", "suspense", "expense", "fx"}


class AccountsFileError(ValueError):
    """The chart of accounts cannot be loaded; names the line and the problem."""


@dataclass(frozen=True)
class Account:
    id: str
    currency_code: str
    allow_negative: bool
    account_type: str


def read_accounts_file(path: str) -> list[Account]:
    accounts: dict[str, Account] = {}
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"accountId", "currencyCode"} - set(reader.fieldnames or [])
        if missing:
            raise AccountsFileError(f"{path}: header lacks {sorted(missing)}")
        for row in reader:
            line = reader.line_num
            account_id = (row.get("accountId") or "").strip()
            currency = (row.get("currencyCode") or "").strip().upper()
            if not account_id and not currency:
                continue
            if not account_id:
                raise AccountsFileError(f"{path}: line {line}: empty accountId")
            if not is_currency(currency):
                raise AccountsFileError(f"{path}: line {line}: {currency!r} is not ISO 4217")
            account_type = (row.get("accountType") or "customer").strip().lower() or "customer"
            flag = (row.get("allowNegative") or "").strip().lower()
            if flag and flag not in TRUE_WORDS | FALSE_WORDS:
                raise AccountsFileError(f"{path}: line {line}: allowNegative must be true/false")
            allow = flag in TRUE_WORDS if flag else account_type in NEGATIVE_BY_TYPE
            if account_id in accounts and accounts[account_id].currency_code != currency:
                raise AccountsFileError(
                    f"{path}: line {line}: {account_id} listed twice with different currencies"
                )
            accounts[account_id] = Account(account_id, currency, allow, account_type)
    return list(accounts.values())


def load_accounts(conn: psycopg.Connection, accounts: list[Account]) -> int:
    """Insert new accounts; refuse to change an existing account's currency. Returns inserts."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE incoming_accounts (id TEXT, currency_code TEXT,"
            " allow_negative BOOLEAN, account_type TEXT) ON COMMIT DROP"
        )
        with cur.copy("COPY incoming_accounts FROM STDIN") as copy:
            for a in accounts:
                copy.write_row((a.id, a.currency_code, a.allow_negative, a.account_type))
        clashes = cur.execute(
            "SELECT i.id, b.currency_code, i.currency_code FROM incoming_accounts i"
            " JOIN bank_accounts b ON b.id = i.id WHERE b.currency_code <> i.currency_code"
            " ORDER BY i.id LIMIT 20"
        ).fetchall()
        if clashes:
            shown = ", ".join(f"{a} is {old}, file says {new}" for a, old, new in clashes)
            raise AccountsFileError(f"accounts file changes existing currencies: {shown}")
        cur.execute(
            "INSERT INTO bank_accounts (id, currency_code, allow_negative, account_type)"
            " SELECT id, currency_code, allow_negative, account_type FROM incoming_accounts"
            " ORDER BY id ON CONFLICT (id) DO NOTHING"
        )
        return cur.rowcount


def account_currencies(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT id, currency_code FROM bank_accounts").fetchall())
