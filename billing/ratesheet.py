"""Parsing of rate sheets: the CSV an operator imports into a rate group.

Pure: text in, :class:`~billing.rating.Rate` values out; no I/O. The header names the columns
(any order, each exactly once)::

    prefix,description,price_per_minute,connection_fee,first_increment,next_increment,grace_seconds
    44,United Kingdom,0.07,0.05,30,6,0

Decisions:
- ``prefix`` is the destination in normalized form: digits only, no ``+`` and no ``00``
  (the same form :func:`billing.numbers.normalize_number` gives), at most 32 digits.
- ``description`` may be empty; an empty ``connection_fee`` or ``grace_seconds`` means 0.
  ``price_per_minute``, ``first_increment`` and ``next_increment`` are required.
- Amounts are parsed by :func:`billing.money.parse_amount`, so a price with more decimals than
  the currency holds is refused rather than silently rounded.
- Blank lines are skipped. Any bad row, or a prefix that appears twice, fails the whole sheet
  with a :class:`RatesheetError` naming the line, so a sheet is imported entirely or not at all.
- A sheet without any rate row is an error: with ``--replace`` it would delete the whole group.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from billing.money import DEFAULT_PLACES, MoneyError, parse_amount
from billing.numbers import is_ascii_digits
from billing.rating import Rate

COLUMNS = (
    "prefix",
    "description",
    "price_per_minute",
    "connection_fee",
    "first_increment",
    "next_increment",
    "grace_seconds",
)

MAX_PREFIX_LENGTH = 32
MAX_DESCRIPTION_LENGTH = 128


class RatesheetError(ValueError):
    """A rate sheet that cannot be imported; the message names the line."""


def _amount(row: dict[str, str], column: str, places: int, required: bool) -> Decimal:
    raw = row[column].strip()
    if not raw:
        if required:
            raise ValueError(f"{column} is empty")
        raw = "0"
    try:
        value = parse_amount(raw, places)
    except MoneyError as exc:
        raise ValueError(f"{column}: {exc}") from None
    if value < 0:
        raise ValueError(f"{column} must not be negative, got {raw}")
    return value


def _integer(row: dict[str, str], column: str, minimum: int, required: bool) -> int:
    raw = row[column].strip()
    if not raw:
        if required:
            raise ValueError(f"{column} is empty")
        return 0
    if not is_ascii_digits(raw):
        raise ValueError(f"{column} must be a whole number of seconds, got {raw!r}")
    value = int(raw)
    if value < minimum:
        raise ValueError(f"{column} must be at least {minimum}, got {value}")
    return value


def _rate(row: dict[str, str], places: int) -> Rate:
    prefix = row["prefix"].strip()
    if not prefix:
        raise ValueError("prefix is empty")
    if not is_ascii_digits(prefix):
        raise ValueError(
            f"prefix must be digits only in international form (no '+' or '00'), got {prefix!r}"
        )
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"prefix is longer than {MAX_PREFIX_LENGTH} digits")
    description = row["description"].strip()
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise ValueError(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    return Rate(
        prefix=prefix,
        description=description,
        price_per_minute=_amount(row, "price_per_minute", places, required=True),
        connection_fee=_amount(row, "connection_fee", places, required=False),
        first_increment=_integer(row, "first_increment", 0, required=True),
        next_increment=_integer(row, "next_increment", 1, required=True),
        grace_seconds=_integer(row, "grace_seconds", 0, required=False),
    )


def _check_header(header: list[str] | None) -> list[str]:
    if header is None:
        raise RatesheetError(
            "line 1: the rate sheet is empty (expected a header: " + ",".join(COLUMNS) + ")"
        )
    names = [name.strip().lower() for name in header]
    missing = [c for c in COLUMNS if c not in names]
    unknown = [n for n in names if n not in COLUMNS]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    problems = []
    if missing:
        problems.append("missing column(s) " + ", ".join(missing))
    if unknown:
        problems.append("unknown column(s) " + ", ".join(repr(n) for n in unknown))
    if duplicated:
        problems.append("repeated column(s) " + ", ".join(duplicated))
    if problems:
        raise RatesheetError(
            "line 1: bad header: " + "; ".join(problems) + " (expected " + ",".join(COLUMNS) + ")"
        )
    return names


def parse_rates_csv(text: str, places: int = DEFAULT_PLACES) -> list[Rate]:
    """Parse a rate sheet; raise :class:`RatesheetError` ("line N: ...") on the first problem."""
    if text.startswith("\ufeff"):  # a byte-order mark left by spreadsheet exports
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        names = _check_header(next(reader, None))
        rates: list[Rate] = []
        seen: dict[str, int] = {}
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(names):
                raise RatesheetError(
                    f"line {line}: expected {len(names)} fields, found {len(cells)}"
                )
            row = dict(zip(names, cells, strict=True))
            try:
                rate = _rate(row, places)
            except ValueError as exc:
                raise RatesheetError(f"line {line}: {exc}") from None
            if rate.prefix in seen:
                raise RatesheetError(
                    f"line {line}: prefix {rate.prefix} already appears on line {seen[rate.prefix]}"
                )
            seen[rate.prefix] = line
            rates.append(rate)
    except csv.Error as exc:
        raise RatesheetError(f"line {reader.line_num}: {exc}") from None
    if not rates:
        raise RatesheetError("the rate sheet has a header but no rates")
    return rates
