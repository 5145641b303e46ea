"""``prepaidctl``'s tables: the fast path prints exactly what rich prints, plain or on a
terminal, and leaves to rich what it cannot lay out the same way."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from admin_cli.output import print_table

HEADERS = ["started at", "calling number", "cost", "leg"]
ROWS = [
    ["2026-11-01T10:00:00Z", "442012345678", "0.1970", "billed"],
    ["2026-11-01T10:02:00Z", "44201234567812345", "0.1000", "other"],
    ["2026-11-02T00:00:00Z", "", "12.0000", "billed"],
]


def console(terminal: bool, width: int = 200) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return (
        Console(
            file=out, width=width, highlight=False, soft_wrap=False, force_terminal=terminal,
            color_system="standard" if terminal else None,
        ),
        out,
    )  # fmt: skip


def with_rich(headers: list[str], rows: list[list[str]], title: str | None, **kw: bool) -> str:
    con, out = console(**kw)  # type: ignore[arg-type]
    table = Table(title=title)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    con.print(table)
    return out.getvalue()


def fast(headers: list[str], rows: list[list[str]], title: str | None, **kw: object) -> str:
    con, out = console(**kw)  # type: ignore[arg-type]
    print_table(con, title, headers, rows)
    return out.getvalue()


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize(
    ("headers", "rows", "title"),
    [
        (HEADERS, ROWS, "Calls of card 1000000001"),
        (HEADERS, ROWS, None),
        (HEADERS, ROWS * 300, "Calls of card 1000000001"),
        (["a"], [["x"]], "a title much longer than the table it is the title of"),
        (["name", "note"], [["gw1", "a [bold]note[/bold]"], ["gw2", "x"]], "NAS"),
        (["name", "note"], [["gw1", "日本語のメモ"], ["gw2", "ü"]], "NAS"),
        (["n"], [["x" * 300]], None),
    ],
)
def test_same_as_rich(
    headers: list[str], rows: list[list[str]], title: str | None, terminal: bool
) -> None:
    assert fast(headers, rows, title, terminal=terminal) == with_rich(
        headers, rows, title, terminal=terminal
    )


def test_narrow_terminal_left_to_rich() -> None:
    assert fast(HEADERS, ROWS, "t", terminal=True, width=40) == with_rich(
        HEADERS, ROWS, "t", terminal=True, width=40
    )
