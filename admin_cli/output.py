"""Printing records as a rich table, JSON or CSV.

JSON conventions: money as decimal strings with the currency's places ("4.8030"), datetimes in
ISO 8601 UTC with a "Z", dates as YYYY-MM-DD, absent values as null. CSV uses the same text, with
absent values empty and lists joined by spaces.
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from billing.money import format_amount


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def plain(value: Any, places: int) -> Any:
    """A JSON-ready value: money, times and tuples turned into strings and lists, recursively
    (nested records and lists of records too)."""
    if isinstance(value, Decimal):
        return format_amount(value, places)
    if isinstance(value, datetime):
        return value.replace(microsecond=0).isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (tuple, list)):
        return [plain(v, places) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v, places) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def text(value: Any, places: int) -> str:
    """A table or CSV cell."""
    value = plain(value, places)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def stdout_console() -> Console:
    out = sys.stdout
    wide = None if out.isatty() else 200
    return Console(file=out, width=wide, highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def emit_records(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: OutputFormat,
    places: int,
    title: str | None = None,
    empty: str = "nothing to show",
) -> None:
    """Print a list of records (dicts) with the given columns, in order."""
    if fmt == OutputFormat.JSON:
        data = [{c: plain(r.get(c), places) for c in columns} for r in records]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if fmt == OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            writer.writerow([text(r.get(c), places) for c in columns])
        return
    if not records:
        stderr_console().print(empty)
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c.replace("_", " "))
    for r in records:
        table.add_row(*(text(r.get(c), places) for c in columns))
    stdout_console().print(table)


def emit_object(
    record: Mapping[str, Any], fmt: OutputFormat, places: int, title: str | None = None
) -> None:
    """Print one record: a JSON object, a one-row CSV, or a two-column table."""
    if fmt == OutputFormat.JSON:
        data = {k: plain(v, places) for k, v in record.items()}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if fmt == OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(list(record))
        writer.writerow([text(v, places) for v in record.values()])
        return
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for k, v in record.items():
        table.add_row(k.replace("_", " "), text(v, places))
    stdout_console().print(table)
