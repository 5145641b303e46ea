"""Money: the one owner of amounts and rounding.

Every amount in Prepaid AAA is a :class:`decimal.Decimal`; floats never touch money. Amounts are
rounded in exactly one place, :func:`round_money`, to the currency's precision (4 decimal places
unless configured otherwise) with ROUND_HALF_UP, the rule card holders and auditors expect.
Intermediate products (price x seconds / 60) are computed exactly first and rounded once.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

DEFAULT_PLACES = 4

#: Exact arithmetic for intermediate results: 34 significant digits is far beyond any tariff.
_CONTEXT = decimal.Context(
    prec=34, rounding=decimal.ROUND_HALF_UP, traps=[decimal.InvalidOperation]
)

ZERO = Decimal(0)


class MoneyError(ValueError):
    """An amount that is not a valid money value (not a number, NaN, infinite)."""


def quantum(places: int = DEFAULT_PLACES) -> Decimal:
    return Decimal(1).scaleb(-places)


def round_money(amount: Decimal, places: int = DEFAULT_PLACES) -> Decimal:
    """Round an exact amount to the currency precision. The only rounding in the product."""
    return amount.quantize(quantum(places), rounding=decimal.ROUND_HALF_UP, context=_CONTEXT)


def parse_amount(text: str | int | Decimal, places: int = DEFAULT_PLACES) -> Decimal:
    """Parse an operator-entered amount ("5", "5.00", "0.07").

    Refuses floats' artefacts and anything with more decimals than the currency holds, so that
    what the operator typed is exactly what is stored.
    """
    if isinstance(text, float):  # pragma: no cover - defensive, callers pass str
        raise MoneyError("amounts must not be floats")
    try:
        value = Decimal(str(text).strip())
    except decimal.InvalidOperation:
        raise MoneyError(f"not an amount: {text!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not an amount: {text!r}")
    if value != round_money(value, places):
        raise MoneyError(f"{text} has more than {places} decimal places")
    return round_money(value, places)


def exact_mul_div(a: Decimal, b: int | Decimal, c: int | Decimal) -> Decimal:
    """a * b / c computed exactly (to 34 digits), for rating before the single rounding."""
    return _CONTEXT.divide(_CONTEXT.multiply(a, Decimal(b)), Decimal(c))


def format_amount(amount: Decimal, places: int = DEFAULT_PLACES) -> str:
    """A decimal string with exactly ``places`` decimals ("4.8030")."""
    return str(round_money(amount, places))
