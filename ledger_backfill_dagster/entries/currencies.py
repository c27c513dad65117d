"""ISO 4217 currencies and their minor units, from the maintained `iso4217` package."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import cache

import iso4217

# Codes ISO reserves for testing and for "no currency": never a posting currency.
NOT_A_POSTING_CURRENCY = {"XTS", "XXX"}
# Places used when ISO gives no minor unit ("N.A.": gold, SDR, …): exact to 18 decimals.
UNBOUNDED_PLACES = 18


@cache
def minor_units_table() -> dict[str, int | None]:
    """Every active ISO 4217 code and its minor units (None where ISO says N.A.)."""
    return {
        currency.code: currency.exponent
        for currency in iso4217.Currency
        if currency.code not in NOT_A_POSTING_CURRENCY
    }


def is_currency(code: str) -> bool:
    return code in minor_units_table()


def places(code: str) -> int:
    """Decimal places an amount in `code` may carry."""
    units = minor_units_table().get(code)
    return UNBOUNDED_PLACES if units is None else units


@cache
def places_table() -> dict[str, int]:
    """`places` for every code at once (for vectorized lookups)."""
    return {code: places(code) for code in minor_units_table()}


def convert(amount: Decimal, fx_rate: Decimal, to_currency: str) -> Decimal:
    """amount × fx_rate, rounded half-even to the target currency's minor units."""
    quantum = Decimal(1).scaleb(-places(to_currency))
    with localcontext() as ctx:
        ctx.prec = 80  # exact: no intermediate rounding before the one we mean
        return (amount * fx_rate).quantize(quantum, rounding=ROUND_HALF_EVEN)
