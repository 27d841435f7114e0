"""Argument checks shared by every constructor: fail at the call, name the
argument, the value received and what is valid."""

from __future__ import annotations

import math
import numbers

import numpy as np


def integer(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    valid = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid value for argument `{name}`: expected {valid}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"Invalid value for argument `{name}`: expected {valid}. Received: {name}={value}")
    return int(value)


def boolean(name: str, value) -> bool:
    """True or False (NumPy's `bool_` too), nothing else: `bool("False")` is
    True, so a string, a number or None would silently mean something else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(
        f"Invalid value for argument `{name}`: expected True or False. "
        f"Received: {name}={value!r} of type {type(value).__name__}"
    )


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


# Penalties are computed in float32: a strength beyond its largest value is
# inf there, and so is the penalty.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def strength(name: str, value, alternative: str = "") -> float:
    """A penalty strength: a float in [0, FLOAT32_MAX]. `alternative` names
    what else the caller accepts (e.g. a schedule), for the message."""
    valid = f"a float in [0, {FLOAT32_MAX:.7g}] (penalties are computed in float32){alternative}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid value for argument `{name}`: expected {valid}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    if not (math.isfinite(value) and 0 <= value <= FLOAT32_MAX):
        raise ValueError(f"Invalid value for argument `{name}`: expected {valid}. Received: {name}={value}")
    return float(value)


def config_keys(cls, config: dict, valid) -> None:
    """Unknown keys in a config are an error that lists the valid ones."""
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(
            f"Invalid config for {cls.__name__}: unknown keys {unknown}. "
            f"Valid keys: {sorted(valid)}. Received: config={config}"
        )


def init_arguments(cls) -> list[str]:
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
