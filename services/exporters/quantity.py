"""Kubernetes resource quantities ("500m", "4Gi", "1e3") as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")


def parse_quantity(value: str | float) -> float:
    """The numeric value of a quantity; raises ValueError on anything Kubernetes would refuse."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY.match(value.strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, exponent, suffix = m.groups()
    if exponent:
        return float(Decimal(number + exponent))
    return float(Decimal(number) * _SUFFIX[suffix or ""])
