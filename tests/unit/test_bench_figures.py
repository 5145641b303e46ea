"""Which of a server's benchmark runs is its figure: the fastest clean window (bench.run.best)."""

from __future__ import annotations

from bench.loadgen import Result
from bench.run import Row, best, ratios


def _row(server: str, window: int, done: int, *, lost: int = 0, billed: float = 1.0) -> Row:
    valid = 1000
    result = Result(
        "closed",
        1.0,
        done=done,
        done_total=done,
        accepted=valid,
        calls_billed=int(valid * billed),
        sent=done * 3,
        lost=lost,
    )
    return Row(server, "calls", result, 0.0, 0.0, 0.0, "call", window=window)


def test_a_faster_window_that_lost_requests_is_not_the_figure() -> None:
    rows = [_row("freeradius", 64, 2300), _row("freeradius", 256, 2600, lost=40)]
    assert best(rows, "freeradius", "calls") is rows[0]


def test_a_faster_window_whose_calls_were_refused_is_not_the_figure() -> None:
    # 1,000 cards at 256 in flight: the calls share cards and three in four are refused.
    rows = [_row("prepaid-aaa", 64, 2400), _row("prepaid-aaa", 256, 6300, billed=0.24)]
    assert best(rows, "prepaid-aaa", "calls") is rows[0]


def test_the_fastest_clean_window_is_the_figure_and_the_ratio_names_both_windows() -> None:
    rows = [
        _row("prepaid-aaa", 64, 2400),
        _row("prepaid-aaa", 256, 2700),
        _row("freeradius", 64, 2300),
        _row("freeradius", 256, 2250),
    ]
    assert best(rows, "prepaid-aaa", "calls") is rows[1]
    assert best(rows, "freeradius", "calls") is rows[2]
    line = next(line for line in ratios(rows, 1000.0) if line.startswith("full calls/s"))
    assert "2700 (window 256)" in line and "2300 (window 64)" in line and "1.17x" in line


def test_without_a_clean_window_the_nearest_is_taken_and_given_no_verdict() -> None:
    # Too few cards for the authorizations: both windows refused many, the wider one all.
    rows = [
        _row("prepaid-aaa", 64, 9700, billed=0.79),
        _row("prepaid-aaa", 256, 15200, billed=0.0),
        _row("freeradius", 64, 11300, lost=5),
        _row("freeradius", 256, 11400, lost=40),
    ]
    assert best(rows, "prepaid-aaa", "calls") is rows[0]
    assert best(rows, "freeradius", "calls") is rows[2]
    lines = ratios(rows, 1000.0)
    assert any("no clean calls run of prepaid-aaa" in line for line in lines)
    assert any("no clean calls run of freeradius" in line for line in lines)
    line = next(line for line in lines if line.startswith("full calls/s"))
    assert "no verdict" in line and "MISSED" not in line and " met" not in line
