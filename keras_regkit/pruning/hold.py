"""Holding zeros through training, and letting them go.

Zeros are held by Keras constraints, which the optimizer applies after every
step: no wrapper layers, so names, configs and summaries stay the user's own.
Within one `fit` (the shrink's), they can be held after each call of the
model's train function instead (`StepHold`): the compiled step is left as it
was traced, so holding them costs no trace, and neither does the next `fit`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_regkit import _processes
from keras_regkit import _constraints as constraints
from keras_regkit import weights as weights_lib
from keras_regkit._keras import trainer as fence
from keras_regkit.pruning import select
from keras_regkit._step_functions import pass_into_steps, rebuild_step_functions, take_out_of_steps


MASK_NAME = "hold_zeros_mask"


class HoldZeros(keras.constraints.Constraint):
    """Keeps the entries that were zero when it was made at zero.

    It multiplies the weight by a fixed 0/1 mask after each optimizer step,
    then applies the constraint the weight had before (if any). It lives only
    on the variable, not in the layer's config: a saved model keeps its zeros
    but not the hold, and reloads without keras_regkit.

    Set by `hold_zeros` (`prune(hold=True)`; the shrink, where `StepHold`
    would not hold its zeros alike or save a trace), a new mask costs
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
                select.nonzero_masks([variable.value])[0],
                dtype=select.mask_dtype(variable.value),
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
    optimizer = getattr(model, "optimizer", None)
    variables = list({id(v): v for v in variables}.values())  # one constraint for a weight listed twice
    new, held = [], []
    for variable in variables:
        (new if constraints.find(variable, HoldZeros) is None else held).append(variable)
    for variable in new:  # its constraint makes its mask
        _hold_new(variable, optimizer)
    retrace = bool(new)
    for variable, mask in zip(held, select.nonzero_masks([v.value for v in held])):
        retrace |= _hold_again(variable, mask, optimizer)
    if retrace:
        # The optimizer step traced the old constraints (or, under JAX, the old masks).
        rebuild_step_functions(model, losses_changed=False)


def _hold_new(variable, optimizer) -> None:
    """Holds the current zeros of a variable not held yet: a new constraint,
    which the optimizer step must be traced again to apply."""
    held = HoldZeros(variable, variable.constraint)
    variable.constraint = held
    pass_into_steps(optimizer, held.mask)


def _hold_again(variable, mask, optimizer) -> bool:
    """Holds the current zeros (`mask`) of a variable held already; True if
    its mask is new to the optimizer step, which must then be retraced."""
    held = constraints.find(variable, HoldZeros)
    held.mask.assign(mask)
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
    return release_step_holds(model) + release_held(model, model.weights)


def release_step_holds(model: keras.Model) -> int:
    """Unwraps every `StepHold` around the model's train function; returns
    how many weights they held."""
    released = 0
    while (hold := getattr(wrapped := getattr(model, "train_function", None), "step_hold", None)) is not None:
        released += len(hold.variables)
        hold.release()
        if model.train_function is wrapped:  # a wrapper its hold no longer knows: peel it
            model.train_function = wrapped.inner
    return released


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


# -- holding zeros for the length of one fit ---------------------------------

# A hold after each step reads and writes every held entry once more per step
# (a constraint's multiply is fused into the optimizer's update: nearly free),
# where a constraint costs one trace of the step (and one at the next `fit`).
# Measured on a 2-core CPU (`benchmarks/bench_hold_per_step.py`, JAX, uint8
# masks, against its 0.26 s compile), the after-step hold cost as much as the
# trace at 8.7e8 held entries x steps at the lowest (1.58 M entries, 548
# steps; 5.26 M: 344-657 steps; TensorFlow crosses later). The float32 masks
# before uint8 ones crossed at 2.5e8 on a first CPU, the line until 0.10.8;
# on the second, a whole 128-step shrink of 5.26 M held entries took 2.01 s
# held after each step against 2.28 s by constraints (plain `fit` 1.69 s;
# `bench_hold_per_step.py --shrinks`).
STEP_HOLD_BUDGET = 8e8


def for_fit(model: keras.Model, variables, steps: int | None, traced_anyway: bool = False) -> StepHold | ConstraintHold:
    """How a shrink of `steps` train steps (None: not known) holds the zeros
    of `variables` in the `fit` it runs in: after each call of the train
    function (`StepHold`) where that is the same as a constraint and saves
    a trace of the step, else by constraints. `traced_anyway`: the shrink
    makes Keras trace the step again itself (a changed loss or layer)."""
    release_step_holds(model)  # one left by a shrink that `fit` ended by an exception
    variables = list({id(v): v for v in variables}.values())
    refused = step_hold_refused(model, variables, steps, traced_anyway)
    return ConstraintHold(model, variables) if refused else StepHold(model, variables)


def step_hold_refused(model: keras.Model, variables, steps: int | None, traced_anyway: bool = False) -> str | None:
    """Why zeros held after each call of the train function would not be
    the same as zeros held by a constraint, or would save no trace of the
    step over `steps` (None: it would)."""
    if getattr(model, "steps_per_execution", 1) != 1:
        return "one call of the train function runs several steps (`steps_per_execution`)"
    if any(getattr(v, "constraint", None) is not None for v in variables):
        # A constraint of the user's (or ours) would see the weight unmasked.
        return "a weight has a constraint, which the mask must come before"
    if _distributed(model):
        return "the train step runs on several devices or processes"
    if keras.backend.backend() == "torch" and not getattr(model, "jit_compile", False):
        return "PyTorch runs the step eagerly: there is no trace to save"
    if traced_anyway:
        return "the step is traced again anyway: the constraints add no trace"
    trainable = {id(v) for v in model.trainable_variables}
    entries = sum(math.prod(v.shape) for v in {id(v): v for v in variables}.values() if id(v) in trainable)
    if steps is None or steps * entries > STEP_HOLD_BUDGET:
        return (f"{'an unknown number of' if steps is None else steps} steps over {entries} held entries: "
                "one trace of the step costs less than a multiply after each")
    return None


def _distributed(model) -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with model.distribute_strategy.scope():
            return tf.distribute.has_strategy()  # False in the default strategy's scope
    return _processes.process_count() > 1 or (backend == "jax" and keras.distribution.distribution() is not None)


class ConstraintHold:
    """Holds zeros with `HoldZeros` constraints (`hold_zeros`)."""

    def __init__(self, model: keras.Model, variables: list):
        self.model, self.variables = model, variables

    def update(self) -> None:
        """Holds the variables' current zeros from the next step on."""
        hold_zeros(self.model, self.variables)

    def keep_in_step(self) -> None:
        """Nothing to do: the optimizer step applies the constraints."""

    def release(self) -> None:
        release_held(self.model, self.variables)


class StepHold:
    """Holds zeros by multiplying the trainable ones among `variables` by
    their masks after each call of `model.train_function` (one train step:
    `step_hold_refused` says where it is not), wrapping the function Keras
    traced, which is left as it was. The same product of the same values as
    a `HoldZeros` constraint's, so the same weights bit for bit; each
    `update` sets new masks, which the multiply reads as data."""

    def __init__(self, model: keras.Model, variables: list):
        self.model = model
        trainable = {id(v): i for i, v in enumerate(model.trainable_variables)}
        # A variable no step updates keeps its zeros without help.
        self.variables = [v for v in variables if id(v) in trainable]
        self._positions = [trainable[id(v)] for v in self.variables]
        self._masks = _Masks.of(self.variables)
        self._inner = self._wrapped = None

    def update(self) -> None:
        """Holds the variables' current zeros from the next step on."""
        self._masks.set(select.nonzero_masks([v.value for v in self.variables]))
        self.keep_in_step()

    def keep_in_step(self) -> None:
        """Wraps the model's train function, once more if Keras made a new
        one (`make_train_function(force=True)`); `fit` calls it after the
        callbacks' `on_train_batch_begin`."""
        current = getattr(self.model, "train_function", None)
        if not self._masks.held or current is None or current is self._wrapped:
            return
        self._inner, self._wrapped = current, self._held(current)
        self.model.train_function = self._wrapped

    def callback(self) -> keras.callbacks.Callback:
        """A callback that calls `keep_in_step` before each step of a `fit`
        (the shrink's phase does it itself)."""
        return keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: self.keep_in_step())

    def release(self) -> None:
        """The train function as Keras made it again."""
        if self._wrapped is not None and self.model.train_function is self._wrapped:
            self.model.train_function = self._inner
        self._inner = self._wrapped = None
        self._masks.clear()

    def _held(self, step):
        if keras.backend.backend() != "jax":
            def held_step(*args, **kwargs):
                logs = step(*args, **kwargs)
                if self._masks.held:  # not held: released while something wrapped this function again
                    self._masks.apply()
                return logs
        else:
            def held_step(state, *args, **kwargs):  # the step takes and returns the variables' values
                fence.trainable_values(state)  # a moved layout fails here, before the step donates the state
                logs, state = step(state, *args, **kwargs)
                if not self._masks.held:
                    return logs, state
                values = fence.trainable_values(state)
                masked = self._masks.products([values[i] for i in self._positions])
                for i, value in zip(self._positions, masked):
                    values[i] = value
                return logs, fence.with_trainable_values(state, values)
        held_step.step_hold, held_step.inner = self, step  # for `held_masks` and `release_step_holds`
        return held_step


def held_masks(model: keras.Model) -> list:
    """`(variable, mask)` for each weight whose zeros `model`'s train step
    holds: by a `HoldZeros` constraint, or by a `StepHold` around its train
    function. The masks are live (variables, under TensorFlow a
    `StepHold`'s too): read them at once."""
    pairs = [(v, c.mask) for v in model.weights if (c := constraints.find(v, HoldZeros)) is not None]
    hold = getattr(getattr(model, "train_function", None), "step_hold", None)
    if hold is not None and hold._masks.held:
        pairs += list(zip(hold.variables, hold._masks.values))
    return pairs


class _Masks:
    """The masks a `StepHold` holds (`set` anew after each cut) and the
    multiply by them, traced or compiled once for the variables' shapes: a
    new mask is new data, not a new trace."""

    @staticmethod
    def of(variables: list) -> _Masks:
        kinds = {"tensorflow": _TensorFlowMasks, "jax": _JaxMasks, "torch": _TorchMasks}
        return kinds[keras.backend.backend()](variables)

    def __init__(self, variables: list):
        self.variables, self.values, self.held = variables, None, False

    def set(self, masks: list) -> None:
        """`masks`: per variable, 1 where its entry is held as it is, 0 where
        at zero, in `select.mask_dtype`."""
        self.values, self.held = masks, True

    def clear(self) -> None:
        self.values, self.held = None, False


class _TorchMasks(_Masks):
    def apply(self) -> None:
        """Multiplies the variables by their masks."""
        import torch

        with torch.no_grad():  # no graph for gradients to keep
            for variable, mask in zip(self.variables, self.values):
                variable.assign(variable.value * mask)


class _TensorFlowMasks(_Masks):
    # The masks are variables the multiply captures, and it is called with
    # no arguments, through its concrete function: at 0.2 M held entries on
    # 2 CPU cores, 0.74 ms a call against 1.0 ms for a `tf.function` given
    # the masks (its arguments' binding). Both outlive a release: the hold
    # of a next `fit` assigns new masks, and traces nothing.
    def set(self, masks: list) -> None:
        import tensorflow as tf

        if self.values is None:
            self.values = [tf.Variable(mask, trainable=False) for mask in masks]
            self.multiply = tf.function(self._multiply, autograph=False)
            self._call = self.multiply.get_concrete_function()
        else:
            for variable, mask in zip(self.values, masks):
                variable.assign(mask)
        self.held = True

    def clear(self) -> None:
        self.held = False

    def _multiply(self):
        for variable, mask in zip(self.variables, self.values):
            variable.assign(variable.value * mask)

    def apply(self) -> None:
        """Multiplies the variables by their masks."""
        self._call()


class _JaxMasks(_Masks):
    # uint8 masks, as a constraint's (`select.mask_dtype`), converted as
    # they multiply: the same product, bit for bit.
    def products(self, values: list) -> list:
        """The `values` (the variables', as the step returned them, donated)
        times their masks."""
        return _jax_times_masks()(values, self.values)


_jax_multiply = None


def _jax_times_masks():
    """The jitted product, one for every hold: compiled once per process
    for each set of shapes (0.07-0.12 s on 2 CPU cores), not per shrink."""
    global _jax_multiply
    if _jax_multiply is None:
        import jax

        _jax_multiply = jax.jit(lambda values, masks: [v * m.astype(v.dtype) for v, m in zip(values, masks)],
                                donate_argnums=0)
    return _jax_multiply
