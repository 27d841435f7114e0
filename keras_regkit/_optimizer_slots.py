"""Reading an optimizer's per-weight state (its "slots") by public name.

Keras names each slot `<weight path, '/' as '_'>_<slot>` among the public
`optimizer.variables` (Adam's `_momentum` and `_velocity`, RMSprop's
`_velocity`, Adagrad's `_accumulator`, ...). The index-based mapping
(`optimizer._velocities[optimizer._get_variable_index(v)]`) is private; the
names are public. A test fails if a Keras release renames them.
"""

from __future__ import annotations

import keras


def inner(optimizer):
    """The optimizer that keeps the slots: a `LossScaleOptimizer` (mixed
    precision) keeps them in its inner one."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def slot(optimizer, variable, name: str) -> keras.Variable | None:
    """The optimizer's slot `name` (e.g. `"velocity"`) for `variable`, or
    None where it keeps none (SGD, a weight it does not train)."""
    optimizer = inner(optimizer)
    if optimizer is None or not hasattr(variable, "path"):
        return None
    wanted = f"{variable.path.replace('/', '_')}_{name}"
    for candidate in optimizer.variables:
        if candidate.name == wanted and tuple(candidate.shape) == tuple(variable.shape):
            return candidate
    return None
