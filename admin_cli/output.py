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

from rich.cells import cell_len
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
    print_table(
        stdout_console(),
        title,
        [c.replace("_", " ") for c in columns],
        [[text(r.get(c), places) for c in columns] for r in records],
    )


def _plain_cell(cell: str) -> bool:
    """Printed by rich exactly as written: no markup, no control character."""
    return "[" not in cell and cell.isprintable()


def print_table(
    console: Console, title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    """Print a table as rich does, in a fraction of its time when it has many rows.

    rich lays out every cell (about a millisecond per row of eight cells, so seconds for a
    bill of a few thousand calls). When the table fits the console and its cells are plain
    text, rich only draws the frame (title, header, borders, with their styles on a terminal)
    for the measured column widths, and the rows are written in between as rich would write
    them. Anything else is left to rich.
    """
    widths = [cell_len(h) for h in headers]
    plain = all(_plain_cell(h) for h in headers)
    for row in rows:
        for i, cell in enumerate(row):
            plain = plain and _plain_cell(cell)
            widths[i] = max(widths[i], cell_len(cell))
    total = sum(widths) + 3 * len(widths) + 1
    if not plain or total > console.width or (title is not None and cell_len(title) > total):
        table = Table(title=title)
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    frame = Table(title=title)
    for h, w in zip(headers, widths, strict=True):
        frame.add_column(h, min_width=w, max_width=w)
    with console.capture() as captured:
        console.print(frame)
    lines = captured.get().splitlines(keepends=True)  # ..., header rule, bottom edge
    body = [
        "│ "
        + " │ ".join(c + " " * (w - cell_len(c)) for c, w in zip(row, widths, strict=True))
        + " │\n"
        for row in rows
    ]
    console.file.write("".join([*lines[:-1], *body, lines[-1]]))
    console.file.flush()


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
