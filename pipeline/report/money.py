"""Money as the warehouse holds it: an amount in one currency, never mixed with another.

Amounts are formatted with their ISO code and two decimals (the warehouse keeps
`numeric(10,2)` prices), so "GBP 1,234.50" can never be read as dollars; there is no
function here that adds amounts of different currencies.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


def format_money(amount: Decimal | int | float | None, currency: str) -> str:
    """`GBP 1,234,567.89`; `-` for no amount."""
    if amount is None:
        return "-"
    value = Decimal(str(amount)).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return f"{currency} {value:,.2f}"


def axis_prefix(currency: str) -> str:
    """The prefix a money axis in `currency` carries on every tick."""
    return f"{currency} "


def hover_money(currency: str, axis: str = "x") -> str:
    """A Plotly hover template fragment printing the value in `currency`."""
    return f"{currency} %{{{axis}:,.2f}}"
