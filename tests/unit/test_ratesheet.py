"""Rate sheet parsing: pure CSV in, Rate values out, line-numbered errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.ratesheet import COLUMNS, RatesheetError, parse_rates_csv

HEADER = ",".join(COLUMNS)


def sheet(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def test_parses_rows_into_rates() -> None:
    rates = parse_rates_csv(sheet("44,United Kingdom,0.07,0.05,30,6,0", "1,NANP,0.02,0,60,60,5"))
    assert [r.prefix for r in rates] == ["44", "1"]
    uk = rates[0]
    assert uk.description == "United Kingdom"
    assert uk.price_per_minute == Decimal("0.07")
    assert isinstance(uk.price_per_minute, Decimal)
    assert uk.connection_fee == Decimal("0.05")
    assert (uk.first_increment, uk.next_increment, uk.grace_seconds) == (30, 6, 0)
    assert rates[1].grace_seconds == 5


def test_columns_in_any_order_and_optional_cells_default() -> None:
    header = (
        "price_per_minute,prefix,first_increment,next_increment,description,"
        "connection_fee,grace_seconds"
    )
    [rate] = parse_rates_csv(sheet("0.10,49,60,60,,,", header=header))
    assert rate.prefix == "49"
    assert rate.description == ""
    assert rate.connection_fee == 0
    assert rate.grace_seconds == 0


def test_quoted_description_bom_crlf_and_blank_lines() -> None:
    text = "\ufeff" + HEADER + "\r\n" + '44,"UK, mobile",0.07,0.05,30,6,0\r\n\r\n' + "\r\n"
    [rate] = parse_rates_csv(text)
    assert rate.description == "UK, mobile"


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("abc,X,0.07,0,30,6,0", "prefix must be digits"),
        ("+44,X,0.07,0,30,6,0", "prefix must be digits"),
        (",X,0.07,0,30,6,0", "prefix is empty"),
        ("44,X,zero,0,30,6,0", "price_per_minute"),
        ("44,X,,0,30,6,0", "price_per_minute is empty"),
        ("44,X,-0.01,0,30,6,0", "must not be negative"),
        ("44,X,0.00001,0,30,6,0", "more than 4 decimal places"),
        ("44,X,0.07,0,30,0,0", "next_increment must be at least 1"),
        ("44,X,0.07,0,3.5,6,0", "first_increment must be a whole number"),
        ("44,X,0.07,0,30,6", "expected 7 fields, found 6"),
        ("4" * 33 + ",X,0.07,0,30,6,0", "longer than 32 digits"),
    ],
)
def test_bad_row_names_its_line(row: str, fragment: str) -> None:
    text = sheet("1,NANP,0.02,0,60,60,0", "49,Germany,0.05,0.05,30,6,0", row)
    with pytest.raises(RatesheetError) as err:
        parse_rates_csv(text)
    message = str(err.value)
    assert message.startswith("line 4: ")
    assert fragment in message
    assert "\n" not in message


def test_line_numbers_count_blank_lines() -> None:
    text = HEADER + "\n\n44,UK,0.07,0,30,6,0\n\n1,US,oops,0,60,60,0\n"
    with pytest.raises(RatesheetError, match=r"^line 5: "):
        parse_rates_csv(text)


def test_duplicate_prefix_is_an_error_naming_both_lines() -> None:
    text = sheet("44,UK,0.07,0,30,6,0", "1,US,0.02,0,60,60,0", "44,UK again,0.08,0,30,6,0")
    with pytest.raises(RatesheetError, match=r"line 4: prefix 44 already appears on line 2"):
        parse_rates_csv(text)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("prefix,description,price_per_minute", "missing column(s) connection_fee"),
        (HEADER + ",colour", "unknown column(s) 'colour'"),
        (HEADER + ",prefix", "repeated column(s) prefix"),
    ],
)
def test_bad_header(header: str, fragment: str) -> None:
    with pytest.raises(RatesheetError) as err:
        parse_rates_csv(sheet("44,UK,0.07,0,30,6,0", header=header))
    assert str(err.value).startswith("line 1: bad header")
    assert fragment in str(err.value)


def test_empty_sheet_and_header_only_are_errors() -> None:
    with pytest.raises(RatesheetError, match="empty"):
        parse_rates_csv("")
    with pytest.raises(RatesheetError, match="no rates"):
        parse_rates_csv(HEADER + "\n")


def test_places_are_configurable() -> None:
    [rate] = parse_rates_csv(sheet("44,UK,0.071,0,30,6,0"), places=3)
    assert rate.price_per_minute == Decimal("0.071")
    with pytest.raises(RatesheetError, match="more than 2 decimal places"):
        parse_rates_csv(sheet("44,UK,0.071,0,30,6,0"), places=2)
