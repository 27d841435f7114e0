"""A variable's chain of constraints.

Our constraints (`HoldZeros`, `ProximalConstraint`) wrap the one a weight
had before as `inner`, so several compose on one weight in the order they
were set. Finding and removing one must look through the whole chain, not
only at the outermost.
"""

from __future__ import annotations


def chain(variable):
    """The variable's constraints, outermost first, following `inner`."""
    constraint = getattr(variable, "constraint", None)
    while constraint is not None:
        yield constraint
        constraint = getattr(constraint, "inner", None)


def find(variable, cls):
    """The first constraint of class `cls` in the variable's chain, or None."""
    return next((c for c in chain(variable) if isinstance(c, cls)), None)


def unlink(variable, target) -> None:
    """Takes `target` out of the variable's chain; what it wrapped takes its
    place."""
    previous = None
    for constraint in chain(variable):
        if constraint is target:
            if previous is None:
                variable.constraint = target.inner
            else:
                previous.inner = target.inner
            return
        previous = constraint
