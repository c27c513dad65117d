"""Typed row access for psycopg.

`one_row`: the row of a query that always returns exactly one (an aggregate, a RETURNING or a
CTE that ends in one), said once instead of at every call. psycopg types `fetchone()` as
optional, rightly: a query may return no row. For these queries no row means a broken invariant,
and it fails here, named, rather than as a TypeError on None.

`named_row`: psycopg's `namedtuple_row`, typed so a row's fields (`row.id`) can be read: psycopg
types its rows as a bare NamedTuple, whose fields it cannot know before the query runs.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory, namedtuple_row

Row = TypeVar("Row")

named_row: RowFactory[Any] = namedtuple_row


def one_row(cursor: psycopg.Cursor[Row]) -> Row:
    """The cursor's next row, which the query guarantees."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError(
            f"a query that always returns a row returned none: {cursor.statusmessage}"
        )
    return row
