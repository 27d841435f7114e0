"""Argument checks shared by every constructor: fail at the call, name the
argument, the value received and what is valid."""

from __future__ import annotations

import math
import numbers


def integer(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid value for argument `{name}`: expected an int >= {minimum}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(
            f"Invalid value for argument `{name}`: expected an int >= {minimum}. "
            f"Received: {name}={value}"
        )
    return int(value)


def real(name: str, value, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """A finite float in [minimum, maximum]."""
    valid = f"a finite float in [{minimum}, {maximum}]" if maximum < math.inf else f"a finite float >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid value for argument `{name}`: expected {valid}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise ValueError(
            f"Invalid value for argument `{name}`: expected {valid}. "
            f"Received: {name}={value}"
        )
    return float(value)
