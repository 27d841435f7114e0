"""Holding zeros through training, and letting them go.

Zeros are held by Keras constraints, which the optimizer applies after every
step: no wrapper layers, so names, configs and summaries stay the user's own.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_regkit import _constraints as constraints
from keras_regkit import weights as weights_lib
from keras_regkit._step_functions import pass_into_steps, rebuild_step_functions, take_out_of_steps


MASK_NAME = "hold_zeros_mask"


class HoldZeros(keras.constraints.Constraint):
    """Keeps the entries that were zero when it was made at zero.

    It multiplies the weight by a fixed 0/1 mask after each optimizer step,
    then applies the constraint the weight had before (if any). It lives only
    on the variable, not in the layer's config: a saved model keeps its zeros
    but not the hold, and reloads without keras_regkit.

    Set by `hold_zeros` (the shrink, `prune(hold=True)`), a new mask costs
    no retrace of the train step: TensorFlow's and PyTorch's steps read it
    each time they run, and under JAX it rides among the optimizer's
    variables (the jitted step's inputs) until `release_zeros`, left out of
    what the optimizer saves.

    Args:
        variable: The variable whose current zeros are to be held.
        inner: The constraint the variable had before, applied after the mask.

    Example:

    >>> v = keras.Variable([0.0, 2.0])
    >>> keras.ops.convert_to_numpy(rk.pruning.HoldZeros(v)(keras.ops.convert_to_tensor([5.0, 3.0]))).tolist()
    [0.0, 3.0]
    """

    def __init__(self, variable: keras.Variable, inner=None):
        if not isinstance(variable, keras.Variable):
            raise TypeError(
                "Invalid value for argument `variable`: expected a keras.Variable "
                f"(e.g. `layer.kernel`). Received: variable={variable!r} of type "
                f"{type(variable).__name__}"
            )
        if inner is not None and not callable(inner):
            raise TypeError(
                "Invalid value for argument `inner`: expected None or a constraint. "
                f"Received: inner={inner!r}"
            )
        self.inner = inner
        # A variable, not a constant: a constant the size of the weight would
        # be copied into every traced graph. Its path names the weight's (as
        # Keras names an optimizer's slots): under JAX it rides among the
        # optimizer's variables, whose paths must be unique
        # (`Model.get_state_tree`, Orbax checkpoints).
        with keras.name_scope(_path_name(variable), override_parent=""):
            self.mask = keras.Variable(
                ops.cast(ops.not_equal(variable.value, 0), variable.dtype),
                trainable=False,
                name=MASK_NAME,
            )

    def __call__(self, w):
        w = w * ops.cast(self.mask, w.dtype)
        return self.inner(w) if self.inner is not None else w


def _path_name(variable) -> str:
    path = getattr(variable, "path", None) or variable.name
    return path.replace("/", "_")


def hold_zeros(model: keras.Model, variables) -> None:
    """Holds the current zeros of `variables` (a new mask where one is
    already held) and makes the next train step apply the masks."""
    retrace = False
    for variable in variables:
        retrace |= _hold(variable, getattr(model, "optimizer", None))
    if retrace:
        # The optimizer step traced the old constraints (or, under JAX, the old masks).
        rebuild_step_functions(model, losses_changed=False)


def _hold(variable, optimizer) -> bool:
    """Holds the variable's current zeros; True if the optimizer step must be
    retraced: a new constraint was set, or a mask is new to the step."""
    held = constraints.find(variable, HoldZeros)
    if held is None:
        held = HoldZeros(variable, variable.constraint)
        variable.constraint = held
        pass_into_steps(optimizer, held.mask)
        return True
    held.mask.assign(ops.cast(ops.not_equal(variable.value, 0), held.mask.dtype))
    # The same constraint with a new mask: the step reads the mask each time
    # it runs (under JAX, as one of the optimizer's variables), so a cut
    # costs no retrace.
    return not pass_into_steps(optimizer, held.mask)


def release_zeros(model: keras.Model) -> int:
    """Stops holding zeros everywhere in `model`; returns how many weights
    were held. Each weight gets back the constraint it had before.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> _ = rk.prune(model, sparsity=0.5, hold=True)
    >>> rk.release_zeros(model)
    1
    """
    weights_lib.check_model(model)
    return release_held(model, model.weights)


def release_held(model: keras.Model, variables) -> int:
    """Stops holding the zeros of `variables` (those held): each gets back
    the constraint it had before, and its mask leaves the optimizer step it
    was passed into. Returns how many were held."""
    released = 0
    for variable in variables:
        # Anywhere in the chain: a proximal step may wrap the hold.
        held = constraints.find(variable, HoldZeros)
        if held is not None:
            constraints.unlink(variable, held)
            take_out_of_steps(getattr(model, "optimizer", None), held.mask)
            released += 1
    if released:
        rebuild_step_functions(model, losses_changed=False)
    return released

