"""The chart of accounts: load ACCOUNTS_FILE into bank_accounts, read account currencies."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ledger_backfill_dagster.entries.currencies import is_currency
from ledger_backfill_dagster.lib.env import FALSE_WORDS, TRUE_WORDS
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.lib.user_files import UserFileError, read_user_csv

# Account types that may carry a negative balance (the ledger's own side of every entry).
NEGATIVE_BY_TYPE = {"income", "equity", "liability", "clearing", "suspense", "expense", "fx"}


class AccountsFileError(UserFileError):
    """The chart of accounts cannot be loaded; names the variable, the file, the line and the
    problem."""


@dataclass(frozen=True)
class Account:
    id: str
    currency_code: str
    allow_negative: bool
    account_type: str


def read_accounts_file(path: str, setting: str = "ACCOUNTS_FILE") -> list[Account]:
    """The accounts of a chart-of-accounts CSV (header: accountId,currencyCode[,allowNegative]
    [,accountType]); any unusable byte or line fails naming `setting`, the file and the line."""

    def problem(line: int, text: str) -> AccountsFileError:
        return AccountsFileError(f"{setting} {path}: line {line}: {text}")

    try:
        records = read_user_csv(setting, path)
    except UserFileError as exc:
        raise AccountsFileError(str(exc)) from None
    header = [name.strip() for name in records[0][1]] if records else []
    missing = {"accountId", "currencyCode"} - set(header)
    if missing:
        raise problem(records[0][0] if records else 1, f"header lacks {sorted(missing)}")
    accounts: dict[str, Account] = {}
    for line, values in records[1:]:
        row = dict(zip(header, values, strict=False))
        account_id = (row.get("accountId") or "").strip()
        currency = (row.get("currencyCode") or "").strip().upper()
        if not account_id and not currency:
            continue
        if not account_id:
            raise problem(line, "empty accountId")
        if not is_currency(currency):
            raise problem(line, f"{currency!r} is not ISO 4217")
        account_type = (row.get("accountType") or "customer").strip().lower() or "customer"
        flag = (row.get("allowNegative") or "").strip().lower()
        if flag and flag not in TRUE_WORDS | FALSE_WORDS:
            raise problem(line, "allowNegative must be true/false")
        allow = flag in TRUE_WORDS if flag else account_type in NEGATIVE_BY_TYPE
        if account_id in accounts and accounts[account_id].currency_code != currency:
            raise problem(line, f"{account_id} listed twice with different currencies")
        accounts[account_id] = Account(account_id, currency, allow, account_type)
    return list(accounts.values())


def load_accounts(conn: psycopg.Connection, accounts: list[Account]) -> int:
    """Insert new accounts; refuse to change an existing account's currency. Returns inserts."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(query("accounts/create_incoming"))
        with cur.copy("COPY incoming_accounts FROM STDIN") as copy:
            for a in accounts:
                copy.write_row((a.id, a.currency_code, a.allow_negative, a.account_type))
        clashes = cur.execute(query("accounts/currency_clashes")).fetchall()
        if clashes:
            shown = ", ".join(f"{a} is {old}, file says {new}" for a, old, new in clashes)
            raise AccountsFileError(f"ACCOUNTS_FILE changes existing currencies: {shown}")
        cur.execute(query("accounts/insert_new"))
        return cur.rowcount


def account_currencies(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT id, currency_code FROM bank_accounts").fetchall())
