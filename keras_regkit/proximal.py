"""Proximal penalties: exact zeros during training.

A gradient-term L1 makes weights small, never zero: each step moves a weight
by `lr * alpha * sign(w)`, which overshoots zero and comes back. A proximal
step instead maps the weight, after the optimizer's step, to the nearest
point that pays the penalty of one step: `sign(w) * max(|w| - lr * alpha, 0)`
for L1, which is exactly 0 wherever `|w| <= lr * alpha`.

Here the proximal step is a Keras constraint (`ProximalConstraint`), which
the optimizer applies to the weight right after its update, inside the
compiled train step, on every backend. Constraints are the one hook that
every Keras optimizer calls after every step, under `fit` and in a custom
loop that calls `optimizer.apply`, and they compose: a weight's earlier
constraint (`HoldZeros`, `NonNeg`, ...) is kept as `inner` and applied after
the proximal step. Binding puts the constraint on the weights
(`bind_proximal`, or the `ProximalUpdate` callback during `fit`); it then
takes the step size (the learning rate and per-weight state at that step)
from whichever optimizer is applying the step: a model compiled again with
another optimizer is followed, and one whose step size is not known here is
refused at its first step.

The step size is the step the optimizer just took on each entry, per unit of
(its estimate of the) gradient:

- SGD (any momentum, Nesterov): the learning rate.
- Adam, AdamW: `lr * sqrt(1 - beta_2^t) / (sqrt(v) + epsilon)`, Keras'
  own per-entry step on the bias-corrected momentum: the ProxGen
  preconditioner `lr / (sqrt(v_hat) + epsilon_hat)`, with Keras' epsilon
  outside the bias correction (`epsilon_hat = epsilon / sqrt(1 - beta_2^t)`);
  with `amsgrad=True`, `v` is its running maximum.
- RMSprop: `lr / sqrt(v + epsilon)` (`v - mean_grad^2 + epsilon` when
  `centered=True`), as Keras' RMSprop divides.
- Adagrad: `lr / sqrt(accumulator + epsilon)`.

References:
    Parikh & Boyd, "Proximal algorithms", Foundations and Trends in
    Optimization 2014; Yun, Lozano & Yang, "Adaptive proximal gradient
    methods for structured neural networks" (ProxGen), NeurIPS 2021.
"""

from __future__ import annotations

import functools
import weakref

import keras
from keras import ops

from keras_regkit import _constraints as constraints
from keras_regkit import _optimizer_slots as optimizer_slots
from keras_regkit import _penalty_math as penalty_math
from keras_regkit import weights as weights_lib
from keras_regkit._keras import optimizers as optimizers_fence
from keras_regkit._step_functions import rebuild_step_functions
from keras_regkit.regularizers import combined
from keras_regkit.regularizers.base import Penalty, read_value
from keras_regkit.regularizers.group_lasso import GroupLasso

SUPPORTED_OPTIMIZERS = (
    keras.optimizers.SGD,
    keras.optimizers.Adam,  # AdamW is an Adam
    keras.optimizers.RMSprop,
    keras.optimizers.Adagrad,
)


def proximal_parts(regularizer) -> list[Penalty]:
    """The penalties of `regularizer` (parts of a `Combined` too) that act by
    a proximal step, in the order they are applied."""
    if regularizer is None:
        return []
    return [part for part in combined.parts(regularizer) if isinstance(part, Penalty) and part.proximal]


def unsupported(optimizer) -> str | None:
    """Why the proximal step cannot follow `optimizer`'s step, or None if it
    can: the sentence an error gives."""
    inner = optimizer_slots.inner(optimizer)
    if not isinstance(inner, SUPPORTED_OPTIMIZERS):
        received = type(inner).__name__ if isinstance(inner, keras.optimizers.Optimizer) else repr(inner)
        return (
            "proximal penalties need the optimizer's per-weight step size, known here for "
            f"{', '.join(c.__name__ for c in SUPPORTED_OPTIMIZERS)} and AdamW (also inside "
            f"a LossScaleOptimizer), as instances. Received: optimizer={received}. Use one of "
            "those, or the same penalty as a gradient term (proximal=False)."
        )
    if getattr(inner, "gradient_accumulation_steps", None):
        # Keras applies constraints after every call of `apply`, also on the
        # steps that only accumulate: the threshold would act on them too.
        return (
            "proximal penalties do not support gradient accumulation (Keras applies "
            "constraints on the accumulating steps too). Received: "
            f"gradient_accumulation_steps={inner.gradient_accumulation_steps}"
        )
    if getattr(inner, "use_ema", False):
        # The moving average of the weights replaces them at the end of `fit`
        # (or every `ema_overwrite_frequency` steps): it has no exact zeros.
        return (
            "proximal penalties do not support an exponential moving average of the weights "
            "(it replaces the weights, and their exact zeros, at the end of `fit`). "
            "Received: use_ema=True"
        )
    return None


def check_optimizer(optimizer) -> None:
    """Refuses, naming it, an optimizer whose step the proximal step cannot
    follow."""
    reason = unsupported(optimizer)
    if reason is not None:
        raise ValueError(f"Invalid value for argument `optimizer`: {reason}")


def step_size(optimizer, variable, slots: dict | None = None):
    """The step `optimizer` has just taken on `variable` (called after its
    update, before its iteration count moves): a float32 scalar for SGD, a
    float32 tensor of the variable's shape for adaptive optimizers (see the
    module docstring). `slots` caches the slot lookups between calls."""
    inner = optimizer_slots.inner(optimizer)
    slots = {} if slots is None else slots

    def read(name):
        if name not in slots:
            found = optimizer_slots.slot(inner, variable, name)
            if found is None:
                raise RuntimeError(
                    f"{type(inner).__name__} keeps no `{name}` slot for '{variable.path}' among "
                    "`optimizer.variables`: this Keras release names its optimizer state "
                    "differently, or the optimizer does not train this weight."
                )
            slots[name] = found
        return ops.cast(slots[name], "float32")

    lr = ops.cast(inner.learning_rate, "float32")
    if isinstance(inner, keras.optimizers.SGD):
        return lr
    if isinstance(inner, keras.optimizers.Adam):
        t = ops.cast(inner.iterations + 1, "float32")
        v = read("velocity_hat" if inner.amsgrad else "velocity")
        return lr * ops.sqrt(1.0 - ops.power(inner.beta_2, t)) / (ops.sqrt(v) + inner.epsilon)
    if isinstance(inner, keras.optimizers.RMSprop):
        v = read("velocity")
        if inner.centered:
            v = v - ops.square(read("average_gradient"))
        return lr / ops.sqrt(v + inner.epsilon)
    if isinstance(inner, keras.optimizers.Adagrad):
        return lr / ops.sqrt(read("accumulator") + inner.epsilon)
    check_optimizer(inner)  # raises
    raise AssertionError("unreachable")


# How a weight came to be stepped by another optimizer than it was bound to.
_COMPILED = "the model is now compiled with {name}"
_APPLIED = "{name} now takes its step (a training loop applying another optimizer)"


class ProximalConstraint(keras.constraints.Constraint):
    """Applies the proximal step of the weight's proximal penalties after
    each optimizer step, then the constraint the weight had before.

    It reads the penalties from the weight's regularizer when the train
    step is traced (so attaching or removing one takes effect when the step
    is rebuilt, as for gradient terms), and the step size from the optimizer
    that has just stepped (see `keras_regkit.proximal`): the one the model is
    compiled with under `fit`, also after `compile` is called again, and the
    one whose `apply` a custom loop calls. The optimizer it was bound to is
    used only when it is called outside an optimizer's step. Like
    `HoldZeros` it lives only on the variable, never in the layer's config:
    the saved model keeps the penalty (with `proximal=True`), and binding
    again puts this back. Made by `bind_proximal`; not meant to be set by
    hand.

    Args:
        variable: The weight.
        optimizer: The optimizer it is bound to.
        inner: The constraint the variable had before, applied after.
        model: The model it is bound in, whose compiled optimizer `fit`
            steps it with.

    Raises:
        ValueError: When the weight is to be stepped by an optimizer whose
            step size is not known here (see `unsupported`): under `fit`,
            after `compile` was called again, before the first step (the
            penalty asks, also under `evaluate`); in a loop that applies
            another optimizer, when its step is traced (under PyTorch,
            which runs it eagerly, after that optimizer's first update).
    """

    def __init__(self, variable: keras.Variable, optimizer, inner=None, model=None):
        self.variable = variable
        self.inner = inner
        self.set_optimizer(optimizer)
        # The model it was bound in, whose compiled optimizer `fit` will use.
        self.model = None if model is None else weakref.ref(model)

    def set_optimizer(self, optimizer) -> None:
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self._stepping, self._slots = optimizer, {}  # the slots of `_stepping` for this weight, found once

    def __call__(self, w):
        parts = proximal_parts(getattr(self.variable, "regularizer", None))
        if parts:
            steps = functools.partial(self._proximal_steps, parts, self._stepping_optimizer())
            if penalty_math.fuses(self.variable):
                # TensorFlow off XLA runs each op of the step size and the
                # threshold as a pass over the weight: for a large weight, one
                # XLA kernel does all of it in one (as for the penalties).
                steps = penalty_math.one_kernel(steps)
            w = steps(read_value(w))
        return self.inner(w) if self.inner is not None else w

    def check_compiled_optimizer(self) -> None:
        """Refuses the optimizer the model is now compiled with, if its step
        size is not known here. The weight's penalty calls it while `fit`
        builds a newly compiled model's state, before its first step (under
        JAX the step loses the model's weights when it raises)."""
        optimizer = self._compiled_optimizer()
        if optimizer is not None:
            self._follow(optimizer, _COMPILED)

    def _compiled_optimizer(self):
        model = None if self.model is None else self.model()
        return getattr(model, "optimizer", None)

    def _stepping_optimizer(self):
        """The optimizer whose step this call follows, checked once."""
        applying = optimizers_fence.applying_optimizer()
        if applying is not None:
            compiled = optimizer_slots.inner(self._compiled_optimizer())
            self._follow(applying, _COMPILED if compiled is optimizer_slots.inner(applying) else _APPLIED)
        return self._stepping

    def _follow(self, optimizer, change: str) -> None:
        """Follows `optimizer` from now on, or refuses it; `change` says
        how it came, with `{name}` for its class name."""
        if optimizer_slots.inner(optimizer) is optimizer_slots.inner(self._stepping):
            return
        reason = unsupported(optimizer)
        if reason is not None:
            raise ValueError(
                f"Invalid optimizer for the proximal penalty of '{self.variable.path}': it was "
                f"bound to {type(optimizer_slots.inner(self.optimizer)).__name__}, and "
                f"{change.format(name=type(optimizer_slots.inner(optimizer)).__name__)}: {reason}"
            )
        self._stepping, self._slots = optimizer, {}

    def _proximal_steps(self, parts, optimizer, w):
        size = step_size(optimizer, self.variable, self._slots)
        for penalty in parts:
            w = penalty.proximal_step(w, size)
        return w


def _resolve_optimizer(model, optimizer):
    """`optimizer`, or the model's own; checked."""
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                "Invalid value for argument `optimizer`: the model is not compiled, so it has no "
                "optimizer to bind proximal penalties to. Compile it first, or pass the optimizer "
                "of your training loop. Received: optimizer=None"
            )
    check_optimizer(optimizer)
    return optimizer


def bind_proximal(model: keras.Model, optimizer=None) -> int:
    """Makes `optimizer` apply the proximal penalties of `model` after each
    of its steps.

    Every trainable weight whose regularizer has a proximal part
    (`L1(..., proximal=True)`, `ElasticNet`'s L1 part, `GroupLasso`, also
    inside `Combined`) gets a `ProximalConstraint` in front of the
    constraint it had; a weight whose proximal penalty was removed loses
    it. The train function is rebuilt if anything changed. Call it again
    after attaching or removing penalties; it is cheap when nothing
    changed. During `fit`, `keras_regkit.callbacks.ProximalUpdate` calls it
    for you.

    The step size is read, at each step, from the optimizer that applies
    it: a model compiled again with another optimizer, or a loop that
    applies another one, is followed without binding again (a learning-rate
    schedule too), and an optimizer whose step size is not known here is
    refused with a `ValueError` at its first step (see
    `ProximalConstraint`). `optimizer` is checked now and used only where
    the constraint is called outside an optimizer's step.

    In a custom training loop, bind once before the loop; the proximal
    step then runs inside `optimizer.apply(grads, model.trainable_variables)`
    (Keras applies constraints there). Scheduled strengths are evaluated at
    the regularizer's step, as for gradient terms: bind them to the
    optimizer's counter with `regularizer.bind_step(optimizer.iterations)`
    (or move them with `set_step`).

    Args:
        model: A built model.
        optimizer: The optimizer that trains it. Defaults to
            `model.optimizer` (set by `compile`).

    Returns:
        The number of weights with a proximal penalty.

    Raises:
        TypeError: If `model` is not a Keras model.
        ValueError: If `model` is not built. Where it has a proximal
            penalty: if there is no
            optimizer (the model is not compiled and none is given), the
            optimizer is not one whose step size is
            known (SGD, Adam, AdamW, RMSprop, Adagrad), it accumulates
            gradients or keeps a moving average of the weights
            (`use_ema=True`), or a `GroupLasso`'s axis does not fit its
            weight.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(2, kernel_regularizer=rk.regularizers.L1(0.1, proximal=True))])
    >>> optimizer = keras.optimizers.SGD(0.1)
    >>> rk.bind_proximal(model, optimizer)
    1
    """
    # Unbuilt, it has no weights to bind: `fit` would build them inside its
    # first step, after the step was traced without the proximal step.
    weights_lib.check_built(model)
    found = [(v, proximal_parts(getattr(v, "regularizer", None))) for v in model.trainable_weights]
    if any(parts for _, parts in found):
        # Every check before any change: a refusal leaves the model as it
        # was. (With nothing to bind there is no optimizer to check.)
        optimizer = _resolve_optimizer(model, optimizer)
        for variable, parts in found:
            for penalty in parts:
                if isinstance(penalty, GroupLasso):
                    penalty.groups(variable)  # its axis must fit this weight: raise now, not in the trace
    changed = False
    for variable, parts in found:
        existing = constraints.find(variable, ProximalConstraint)
        if not parts:
            if existing is not None:
                constraints.unlink(variable, existing)
                changed = True
            continue
        for penalty in parts:
            penalty.proximal_bound = True
        if existing is None:
            variable.constraint = ProximalConstraint(variable, optimizer, variable.constraint, model)
            changed = True
        else:
            existing.model = weakref.ref(model)
            if existing.optimizer is not optimizer:
                existing.set_optimizer(optimizer)
                changed = True
    if changed:
        # The optimizer step traced the old constraints.
        rebuild_step_functions(model, losses_changed=False)
    return sum(1 for _, parts in found if parts)
