"""Weight penalties whose strengths are floats or schedules.

Every class here is a `keras.regularizers.Regularizer`: pass it to a layer's
`kernel_regularizer=` (or attach it later with `keras_regkit.apply_regularizers`)
and it is saved and reloaded with the model.

A strength may be a schedule (any serializable
`keras.optimizers.schedules.LearningRateSchedule`). The schedule is evaluated
inside the train step at the regularizer's step, so moving the step never
retraces the train function under TensorFlow and PyTorch (under JAX the
compiled step holds it as a constant and is rebuilt when it moves);
`keras_regkit.callbacks.RegularizationScheduler` moves it during `fit`.
A schedule's value is clipped at 0: where it goes negative (e.g.
`PolynomialDecay(0.1, 100, -0.1)` past step 50) the penalty is off, never a
reward for large weights, just as a negative float strength is refused.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Union

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule
Strength = Union[float, LearningRateSchedule]

_PACKAGE = "keras_regkit"


def _magnitude(x):
    """`|x|` whose gradient is `sign(x)`: 0 at exact zeros on every backend.

    JAX differentiates `abs` as 1 at 0, so an L1-like penalty would push
    pruned weights off zero there; TensorFlow and PyTorch already give 0.
    """
    if keras.backend.backend() == "jax":
        return x * ops.sign(x)
    return ops.absolute(x)


def _read(x):
    """The tensor a variable (Keras' or the backend's) holds, read here:
    TensorFlow's custom gradients refuse variables read inside them, and
    PyTorch's see only tensors."""
    if isinstance(x, keras.Variable):
        x = x.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(x)
    return x


def _check_strength(name: str, value) -> Strength:
    if isinstance(value, LearningRateSchedule):
        _check_schedule_serializable(name, value)
        return value
    return _validate.strength(name, value, " or a `keras.optimizers.schedules.LearningRateSchedule`")


def _check_schedule_serializable(name: str, schedule) -> None:
    # A schedule that cannot round-trip would make `model.save` fail (or a
    # reload silently differ) long after this call; refuse it here.
    try:
        config = keras.saving.serialize_keras_object(schedule)
        keras.saving.deserialize_keras_object(config)
    except Exception as error:
        raise TypeError(
            f"Invalid value for argument `{name}`: the schedule "
            f"{type(schedule).__name__} cannot be serialized, so a model using "
            "it could not be saved and reloaded. Implement `get_config` and "
            "register the class with "
            "`@keras.saving.register_keras_serializable()`. "
            f"Received: {name}={schedule!r} ({type(error).__name__}: {error})"
        ) from None


def _max_step() -> int:
    """The largest step the step variable holds: it is an "int", as
    `optimizer.iterations` (int64 under TensorFlow, int32 under JAX and
    PyTorch)."""
    return int(np.iinfo(keras.backend.standardize_dtype("int")).max)


class _Penalty(keras.regularizers.Regularizer):
    """Base of our penalties: strength bookkeeping, scheduling, configs.

    Subclasses name their strengths in `_strength_names`, put any other
    constructor arguments in `_extra_config()`, and implement `_penalty`.
    """

    _strength_names: tuple[str, ...] = ()

    def __init__(self, step: int = 0, **strengths):
        self._strengths = {
            name: _check_strength(name, strengths[name])
            for name in self._strength_names
        }
        step = _validate.integer("step", step, maximum=_max_step())
        # Unbound, the step is `_own_step`. Bound to a counter (the
        # optimizer's iterations), it is `counter + _own_step`: the offset
        # keeps the schedule's position when the counter starts elsewhere (a
        # fresh optimizer on a reloaded model), and `set_step` moves only
        # this regularizer, never the shared counter.
        self._own_step = None
        self._counter = None
        # Set by an object that moves the step itself (ShrinkPhase), so that
        # RegularizationScheduler leaves this regularizer alone.
        self.driver = None
        if self.is_scheduled:
            # "int", as for `optimizer.iterations`: int64 under TensorFlow,
            # int32 where JAX would truncate int64 with a warning.
            self._own_step = keras.Variable(
                step, dtype="int", trainable=False, name="regularizer_step"
            )

    # -- scheduling -------------------------------------------------------
    @property
    def is_scheduled(self) -> bool:
        """Whether any strength is a schedule."""
        return any(
            isinstance(v, LearningRateSchedule) for v in self._strengths.values()
        )

    @property
    def step(self) -> int:
        """The step at which the schedules are evaluated (0 if unscheduled)."""
        if self._own_step is None:
            return 0
        return int(ops.convert_to_numpy(self._step_tensor()))

    def _step_tensor(self):
        if self._counter is None:
            return self._own_step.value
        return ops.cast(self._counter, self._own_step.dtype) + self._own_step.value

    def _counter_value(self) -> int:
        return int(ops.convert_to_numpy(self._counter)) if self._counter is not None else 0

    def set_step(self, step: int) -> None:
        """Moves every schedule of this regularizer (only) to `step`.

        Under JAX a compiled train step holds the step it was traced with:
        rebuild it afterwards (`model.make_train_function(force=True)`; our
        callbacks do this themselves).
        """
        step = _validate.integer("step", step, maximum=_max_step())
        if self._own_step is not None:
            self._own_step.assign(step - self._counter_value())

    @property
    def step_counter(self):
        """The counter the step follows (e.g. `optimizer.iterations`), or None."""
        return self._counter

    def bind_step(self, counter) -> None:
        """Makes the step advance with `counter` (e.g. `optimizer.iterations`)
        from where it is now, with no per-step host work.

        A train function traced before the bind keeps reading the old step:
        rebuild it (the scheduler callback does). Not for `model.fit` under
        JAX, whose compiled step cannot see the optimizer's counter.
        """
        if self.is_scheduled and counter is not self._counter:
            step = self.step
            self._counter = counter
            self.set_step(step)

    def unbind_step(self) -> None:
        """Freezes the step where it is (it no longer follows a counter)."""
        if self._counter is not None:
            step = self.step
            self._counter = None
            self.set_step(step)

    def current_strengths(self) -> dict[str, float]:
        """The strengths at the current step, as Python floats."""
        return {
            name: float(ops.convert_to_numpy(self._strength_tensor(name)))
            for name in self._strength_names
        }

    def _strength_tensor(self, name):
        value = self._strengths[name]
        if isinstance(value, LearningRateSchedule):
            # Clipped where it is evaluated (one scalar op): a schedule that
            # goes negative switches the penalty off, as a negative float
            # strength is refused.
            return ops.maximum(ops.cast(value(self._step_tensor()), "float32"), 0.0)
        return value

    # -- the penalty ------------------------------------------------------
    def __call__(self, x):
        strengths = {n: self._strength_tensor(n) for n in self._strength_names}
        return self._penalty(_read(x), **strengths)

    def _penalty(self, x, **strengths):
        """The penalty of `x`, a tensor of the variable's dtype, computed in
        float32: under mixed precision and for float16/bfloat16 variables it
        must neither overflow nor lose small terms. The cast is the
        penalty's own, inside its fused kernel where there is one: a
        separate cast would be one more pass over a float16 weight."""
        raise NotImplementedError

    # -- serialization ----------------------------------------------------
    def _extra_config(self) -> dict:
        return {}

    def get_config(self) -> dict:
        config = {}
        for name, value in self._strengths.items():
            if isinstance(value, LearningRateSchedule):
                value = keras.saving.serialize_keras_object(value)
            config[name] = value
        config.update(self._extra_config())
        if self.is_scheduled:
            # The schedule position travels with the model file.
            config["step"] = self.step
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        _validate.config_keys(cls, config, _validate.init_arguments(cls))
        for name in cls._strength_names:
            if isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={_describe(v)}" for k, v in {**self._strengths, **self._extra_config()}.items()
        )
        return f"{type(self).__name__}({args})"


def _describe(value) -> str:
    # A schedule's default repr carries its address; reports must not.
    if isinstance(value, LearningRateSchedule):
        config = {k: v for k, v in value.get_config().items() if k != "name"}
        return f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"
    return repr(value)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class L1(_Penalty):
    """L1 penalty: `alpha * sum(|x|)`, with `alpha` a float or a schedule.

    With a float strength it equals `keras.regularizers.L1(alpha)`.

    Args:
        alpha: Strength, a float >= 0 or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to 0.01.
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable schedule.
        ValueError: If `alpha` is negative, NaN, or beyond float32's range.

    Example:

    >>> reg = rk.regularizers.L1(0.1)
    >>> round(float(reg(keras.ops.ones((2, 2)))), 6)
    0.4
    """

    _strength_names = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, *, step: int = 0):
        super().__init__(step=step, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _penalty(self, x, alpha):
        return _l1_l2(x, l1=alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class L2(_Penalty):
    """L2 penalty: `alpha * sum(x ** 2)`, with `alpha` a float or a schedule.

    With a float strength it equals `keras.regularizers.L2(alpha)` (no 1/2).

    Args:
        alpha: Strength, a float >= 0 or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to 0.01.
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable schedule.
        ValueError: If `alpha` is negative, NaN, or beyond float32's range.

    Example:

    >>> reg = rk.regularizers.L2(0.1)
    >>> round(float(reg(keras.ops.ones((2, 2)) * 2)), 6)
    1.6
    """

    _strength_names = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, *, step: int = 0):
        super().__init__(step=step, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _penalty(self, x, alpha):
        return _l1_l2(x, l2=alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ElasticNet(_Penalty):
    """Elastic net: `l1 * sum(|x|) + l2 * sum(x ** 2)`.

    Each strength is a float or its own schedule. With floats it equals
    `keras.regularizers.L1L2(l1, l2)`.

    Args:
        l1: L1 strength, a float >= 0 or a schedule. Defaults to 0.01.
        l2: L2 strength, a float >= 0 or a schedule. Defaults to 0.01.
        step: Position of the schedules (saved with the model). Defaults to 0.

    Raises:
        TypeError: If a strength is neither a number nor a serializable
            schedule.
        ValueError: If a strength is negative, NaN, or beyond float32's range.

    Example:

    >>> reg = rk.regularizers.ElasticNet(l1=0.1, l2=0.1)
    >>> round(float(reg(keras.ops.ones((2, 2)) * 2)), 4)
    2.4

    References:
        Zou & Hastie, "Regularization and variable selection via the elastic
        net", JRSS-B 2005.
    """

    _strength_names = ("l1", "l2")

    def __init__(self, l1: Strength = 0.01, l2: Strength = 0.01, *, step: int = 0):
        super().__init__(step=step, l1=l1, l2=l2)

    @property
    def l1(self) -> Strength:
        return self._strengths["l1"]

    @property
    def l2(self) -> Strength:
        return self._strengths["l2"]

    def _penalty(self, x, l1, l2):
        return _l1_l2(x, l1=l1, l2=l2)


def _group_norms(x, axis):
    """The L2 norm of each group of the float32 of `x` (entries sharing an
    index along `axis`)."""
    w = ops.cast(x, "float32")
    squares = ops.sum(ops.square(w), axis=[i for i in range(len(w.shape)) if i != axis])
    # sqrt has an infinite derivative at 0: a dead group would get NaN
    # gradients. Take the norm only where it is positive; elsewhere
    # `0 * squares`: 0 for a dead group, NaN for one holding NaN, so the
    # penalty is NaN (as every other penalty's), not a dead group's 0. Its
    # gradient, as the fused one: NaN at the NaN entries, 0 in the rest of
    # their group.
    positive = squares > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0 * squares)


def _group_lasso_gradient(x, norms, factor, axis):
    """`factor * w / ||w_g||` (0 in a dead group) in the dtype of `x`, with
    `w` the float32 of `x`: the gradient of `factor * sum(norms)`."""
    w = ops.cast(x, "float32")
    positive = norms > 0
    shape = [-1 if i == axis else 1 for i in range(len(w.shape))]
    scale = ops.reshape(ops.where(positive, factor / ops.where(positive, norms, 1.0), 0.0), shape)
    return ops.cast(w * scale, x.dtype)


# Beyond |x| / scale = _LINEAR_FROM the penalty grows linearly (with the slope
# it has there) instead of exponentially, and beyond _SATURATE_AT it stops
# growing (at about 4.85e28 * alpha per entry), so a runaway weight can't make
# its term or its gradient inf/NaN.
_LINEAR_FROM = 20.0
_SATURATE_AT = 1e20
# float16 variables receive float16 gradients: there the exponential part ends
# where the gradient would reach half of float16's largest value.
_GRADIENT_LIMIT = {"float16": 65504.0 / 2}
# ExpAbs' `scale`: 1 / scale must be a normal float32.
_MIN_SCALE, _MAX_SCALE = 1e-30, 1e30


def _rows(x):
    """The axis of a per-row sum of `x` (see `_exp_abs_sums`)."""
    return -1 if len(x.shape) > 1 else None


def _exp_abs_parts(x, inv_scale, end):
    """`w`, the float32 of `x`; `u = |w| / scale`; `u` clipped where the
    penalty stops growing; and clipped again where it turns linear."""
    w = ops.cast(x, "float32")
    u = ops.absolute(w) * inv_scale
    clipped = ops.minimum(u, _SATURATE_AT)
    return w, u, clipped, ops.minimum(clipped, end)


def _exp_abs_slope(w, u, exp_of_exponential, factor):
    """The gradient of `factor * scale * terms`: `factor * sign(w) *
    exp(min(u, end))` on both sides of `end`, and 0 past the saturation,
    where the penalty is constant. sign(w) is 0 at exact zeros (see
    `_magnitude`)."""
    # `u > _SATURATE_AT`, not `u <= ...`: a NaN weight gets a NaN gradient, as autodiff gives.
    return ops.where(u > _SATURATE_AT, 0.0, factor * ops.sign(w) * exp_of_exponential)


# Under TensorFlow the forward and the backward pass each run one
# XLA-compiled kernel (`_one_kernel`) that reads the weight once, in its own
# dtype, and writes nothing but the row sums or the gradient: without XLA,
# TensorFlow runs every op as its own pass over the weight, and autodiff of
# the penalty takes about twenty. The backward kernel computes the `exp`
# again, which costs less than writing the gradient in the forward pass and
# reading it back.
def _exp_abs_sums(x, inv_scale, end):
    """ExpAbs' terms (without `alpha`), summed per row.

    One sum: XLA on CPU takes about twice as long for two sums in one
    kernel as for one. Per row (over the last axis) rather than in total:
    XLA on CPU sums in order, which over millions of float32 terms drifts by
    about 1e-6; the caller's sum of the few row sums stays within 1e-7.
    """
    _, _, clipped, exponential = _exp_abs_parts(x, inv_scale, end)
    # `clipped - exponential` is `relu(clipped - end)`, exactly: 0 but where
    # the penalty is linear.
    terms = _expm1_of_nonnegative(exponential) + ops.exp(end) * (clipped - exponential)
    return ops.sum(terms, axis=_rows(x))


def _expm1_of_nonnegative(v):
    """`expm1(v)` for `v >= 0`, to 3e-7 relative (as XLA's own), and
    cheaper than XLA's `expm1` on CPU: below 0.5 its Taylor series up to
    `v ** 8` (the rest is under 1e-8 relative there), above it `exp(v) - 1`
    (which loses under a bit there)."""
    series = _EXPM1_SERIES[-1]
    for coefficient in reversed(_EXPM1_SERIES[:-1]):  # Horner
        series = series * v + coefficient
    return ops.where(v < 0.5, v * series, ops.exp(v) - 1.0)


_EXPM1_SERIES = [1.0 / math.factorial(n) for n in range(1, 9)]


def _exp_abs_gradient(x, upstream, factor, inv_scale, end):
    w, u, _, exponential = _exp_abs_parts(x, inv_scale, end)
    # The upstream last, as autodiff would: folded into `factor` it could
    # overflow to inf, and inf * sign(0) is NaN at exact zeros.
    return ops.cast(upstream * _exp_abs_slope(w, u, ops.exp(exponential), factor), x.dtype)


def _exp_abs_sums_and_slope(x, factor, inv_scale, end):
    """The exponential and the linear terms, each summed per row, and the
    gradient, from one `exp` (the derivative of `expm1` is the forward
    `expm1` plus 1), computed in the forward pass: for JAX, whose compiled
    step fuses them as it likes (the two kernels of TensorFlow's path, or
    one sum, take JAX about twice as long), for PyTorch, which runs op by
    op, and under TensorFlow for eager calls and small weights (see
    `_fuses`)."""
    w, u, clipped, exponential = _exp_abs_parts(x, inv_scale, end)
    expm1_of_exponential = ops.expm1(exponential)
    sums = ops.sum(expm1_of_exponential, axis=_rows(x)), ops.sum(clipped - exponential, axis=_rows(x))
    return sums, _exp_abs_slope(w, u, expm1_of_exponential + 1.0, factor)


def _one_kernel(fn):
    # TensorFlow without XLA (the default train step on CPU) runs each op as
    # its own pass over memory; XLA fuses `fn` into one. JAX compiles the
    # whole train step anyway, and PyTorch runs `fn` as it is.
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


_exp_abs_sums_kernel = _one_kernel(_exp_abs_sums)
_exp_abs_gradient_kernel = _one_kernel(_exp_abs_gradient)


def _with_gradient(forward, x):
    """The penalty that `forward(x)` returns, differentiated by the
    `gradient(upstream)` it returns with it. `gradient` is given the float32
    upstream and returns the gradient in the dtype of `x`, computed in
    float32 and rounded once, as autodiff would: a loss scale of 2**16 is
    inf in float16."""

    @ops.custom_gradient
    def penalty(x):
        value, gradient = forward(x)

        def backward(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return gradient(ops.cast(upstream, "float32"))

        return value, backward

    return penalty(x)


def _l1_l2_sums(x, l1, l2, with_l1, with_l2):
    """Row sums of `l1 * |w|` (if `with_l1`) plus `l2 * w ** 2` (if
    `with_l2`), with `w` the float32 of `x`, in one sum (see
    `_exp_abs_sums`). A term left out is not computed: `0 * w ** 2` would be
    NaN where the square overflows."""
    w = ops.cast(x, "float32")
    terms = _total(
        ([l1 * ops.absolute(w)] if with_l1 else []) + ([l2 * ops.square(w)] if with_l2 else [])
    )
    return ops.sum(terms, axis=_rows(x))


def _l1_l2_gradient(x, l1, l2, with_l1, with_l2):
    """`l1 * sign(w) + 2 * l2 * w` in the dtype of `x`, from the terms used."""
    w = ops.cast(x, "float32")
    grad = 0.0
    if with_l1:
        grad = l1 * ops.sign(w)
    if with_l2:
        grad = grad + (2.0 * l2) * w
    return ops.cast(grad, x.dtype)


_l1_l2_sums_kernel = _one_kernel(_l1_l2_sums)
_l1_l2_gradient_kernel = _one_kernel(_l1_l2_gradient)
_group_norms_kernel = _one_kernel(_group_norms)
_group_lasso_gradient_kernel = _one_kernel(_group_lasso_gradient)


def _fuses(x) -> bool:
    """Whether the penalty of `x` runs as fused kernels of its own
    (`_one_kernel`): under TensorFlow, inside a traced function (the train
    step), where a step without XLA would make every op of the penalty and
    of its gradient a pass over the weight, and for a weight of at least
    `_FUSED_FROM` entries. JAX fuses its whole train step anyway.

    Not for an eager call (`total_penalty`, a penalty called by hand): a
    kernel would be compiled for every new weight shape, and TensorFlow
    warns of retracing after five. Not for a small weight: there the fused
    pair is slower than the plain ops (measured in float32: 680 against
    360 us for value and gradient of a 1024x10 weight; equal at 256x256) and
    compiles for 0.1-0.6 s the first time.
    """
    if keras.backend.backend() != "tensorflow" or None in x.shape:
        return False
    import tensorflow as tf

    return not tf.executing_eagerly() and math.prod(x.shape) >= _FUSED_FROM


_FUSED_FROM = 256 * 256


def _l1_l2(x, l1=None, l2=None):
    """`l1 * sum(|x|) + l2 * sum(x ** 2)` in float32, of `x` as stored; a
    term whose strength is None is left out."""
    if _fuses(x):
        used = [s is not None for s in (l1, l2)]
        l1, l2 = (ops.convert_to_tensor(0.0 if s is None else s, "float32") for s in (l1, l2))

        def forward(x):
            value = ops.sum(_l1_l2_sums_kernel(x, l1, l2, *used))
            return value, lambda upstream: _l1_l2_gradient_kernel(
                x, upstream * l1, upstream * l2, *used
            )

        return _with_gradient(forward, x)
    x = ops.cast(x, "float32")
    terms = []
    if l1 is not None:
        terms.append(l1 * ops.sum(_magnitude(x)))
    if l2 is not None:
        terms.append(l2 * ops.sum(ops.square(x)))
    return _total(terms)


def _total(terms):
    # Not `sum(terms)`: `0 + term` would be one more op in every step.
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExpAbs(_Penalty):
    """Exponential penalty: `alpha * sum(exp(|x| / scale) - 1)`.

    Near zero it behaves like L1 (`alpha / scale * |x|`), so it makes weights
    sparse, while large weights pay exponentially more, which keeps them from
    running away. It is computed with `expm1`, so tiny weights keep full
    float32 precision, and always in float32 (also for float16/bfloat16
    variables and under mixed precision).

    Very large weights: for `|x| / scale > 20` the penalty continues linearly
    with the slope it has at 20 (`alpha * exp(20) / scale`, about 4.85e8 *
    alpha / scale) instead of exponentially, and for `|x| / scale > 1e20` it
    stays constant. The value and the gradient are therefore finite for every
    finite weight. For float16 variables, whose gradients are float16, the
    linear part starts earlier, where the gradient reaches 32752 (at
    `|x| / scale = log(32752 * scale / alpha)`, about 10.4 for
    `alpha = scale`), so it stays finite there too. (Mixed-precision
    policies keep float32 variables and are not affected.)

    Cost under TensorFlow: about that of Keras' `L1L2`, with or without
    XLA. In a traced train step (`fit`'s default) the forward and the
    backward pass each read the weight once, in an XLA-compiled kernel of
    their own, even when the step itself is not compiled; the gradient is
    written by hand. Under JAX and PyTorch the
    `exp` makes it cost more than `L1L2` on a CPU (see
    benchmarks/bench_penalty_overhead.py).

    Args:
        alpha: Strength, a float >= 0 or a schedule. Defaults to 0.01.
        scale: The weight magnitude at which the exponential sets in, a
            float in [1e-30, 1e30]. Defaults to 1.0.
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable schedule,
            or `scale` is not a number.
        ValueError: If `alpha` is negative, NaN, or beyond float32's range, or `scale` is
            outside [1e-30, 1e30].

    Example:

    >>> reg = rk.regularizers.ExpAbs(alpha=1.0)
    >>> round(float(reg(keras.ops.convert_to_tensor([1.0, -1.0]))), 4)
    3.4366
    """

    _strength_names = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, scale: float = 1.0, *, step: int = 0):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(
                "Invalid value for argument `scale`: expected a finite float > 0. "
                f"Received: scale={scale!r} of type {type(scale).__name__}"
            )
        # The penalty uses 1 / scale in float32: beyond these bounds it would
        # overflow (a NaN penalty at zero weights) or vanish (no penalty).
        if not (math.isfinite(scale) and _MIN_SCALE <= scale <= _MAX_SCALE):
            raise ValueError(
                f"Invalid value for argument `scale`: expected a float > 0 in [{_MIN_SCALE:g}, "
                f"{_MAX_SCALE:g}] (its reciprocal is used in float32). Received: scale={scale}"
            )
        self.scale = float(scale)
        super().__init__(step=step, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _penalty(self, x, alpha):
        # Tensors, so that one trace of the kernel serves every strength.
        alpha = ops.convert_to_tensor(alpha, "float32")
        end = ops.convert_to_tensor(self._end_of_exponential(x.dtype, alpha), "float32")
        inv_scale = ops.convert_to_tensor(1.0 / self.scale, "float32")

        factor = alpha * inv_scale

        if _fuses(x):

            def forward(x):
                value = alpha * ops.sum(_exp_abs_sums_kernel(x, inv_scale, end))
                return value, lambda upstream: _exp_abs_gradient_kernel(
                    x, upstream, factor, inv_scale, end
                )

        else:

            def forward(x):
                (exponential, linear), slope = _exp_abs_sums_and_slope(x, factor, inv_scale, end)
                value = alpha * (ops.sum(exponential) + ops.exp(end) * ops.sum(linear))
                return value, lambda upstream: ops.cast(upstream * slope, x.dtype)

        return _with_gradient(forward, x)

    def _end_of_exponential(self, dtype, alpha):
        limit = _GRADIENT_LIMIT.get(keras.backend.standardize_dtype(dtype))
        if limit is None:
            return _LINEAR_FROM
        # The gradient is alpha / scale * exp(u): stop where it reaches limit.
        end = ops.log(limit * self.scale / ops.maximum(alpha, 1e-30))
        return ops.clip(end, 0.0, _LINEAR_FROM)

    def _extra_config(self) -> dict:
        return {"scale": self.scale}



@keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupLasso(_Penalty):
    """Group lasso (L2,1): `alpha * sum_g sqrt(n_g) * ||x_g||_2`.

    A group is every entry with the same index along `axis`. With the default
    `axis=-1` that is the set of weights feeding one output unit of a `Dense`
    layer, or one filter of a `Conv1D`/`Conv2D`/`Conv3D` kernel (or one output
    channel of a `SeparableConv` pointwise kernel). The penalty drives whole
    groups to exact zero together, which is what makes a unit removable
    (`keras_regkit.compact`). Each group's norm is weighted by the square root
    of its size (Yuan & Lin), so one strength suits layers of different
    fan-in.

    Biases: a regularizer sees one variable, so a unit's bias cannot join its
    kernel group. A dead unit's constant output (`activation(bias)`) is folded
    into the next layer by `compact`, so the bias need not be zero; to
    penalize biases as well, attach `GroupLasso` to them too
    (`weights=("kernel", "bias")`), where each bias is a group of one.

    The gradient at a group that is exactly zero is taken as zero (the
    subgradient that keeps it there), never NaN, so pruned groups stay put.

    Args:
        alpha: Strength, a float >= 0 or a schedule. Defaults to 0.01.
        axis: The axis that indexes the groups. Defaults to -1 (output units
            and filters).
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable
            schedule, or `axis` is not an integer.
        ValueError: If `alpha` is negative, NaN, or beyond float32's range, or `axis` is out
            of range for the weight it is applied to (at the first call).

    Example:

    >>> reg = rk.regularizers.GroupLasso(0.1)
    >>> w = keras.ops.convert_to_tensor([[3.0, 0.0], [4.0, 0.0]])  # unit 0: norm 5
    >>> round(float(reg(w)), 4)  # 0.1 * sqrt(2) * 5
    0.7071

    References:
        Yuan & Lin, "Model selection and estimation in regression with grouped
        variables", JRSS-B 2006; Scardapane et al., "Group sparse
        regularization for deep neural networks", Neurocomputing 2017.
    """

    _strength_names = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, axis: int = -1, *, step: int = 0):
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(
                "Invalid value for argument `axis`: expected an int. "
                f"Received: axis={axis!r} of type {type(axis).__name__}"
            )
        self.axis = int(axis)
        super().__init__(step=step, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _penalty(self, x, alpha):
        rank = len(x.shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"GroupLasso(axis={self.axis}) does not fit a weight of shape "
                f"{tuple(x.shape)}: expected axis in [{-rank}, {rank - 1}]."
            )
        axis = self.axis % rank
        group_size = math.prod(d for i, d in enumerate(x.shape) if i != axis)
        factor = alpha * math.sqrt(group_size)
        if _fuses(x):
            factor = ops.convert_to_tensor(factor, "float32")

            def forward(x):
                norms = _group_norms_kernel(x, axis)
                return factor * ops.sum(norms), lambda upstream: _group_lasso_gradient_kernel(
                    x, norms, upstream * factor, axis
                )

            return _with_gradient(forward, x)
        return factor * ops.sum(_group_norms(x, axis))

    def _extra_config(self) -> dict:
        return {"axis": self.axis}


def _check_part_serializable(index: int, regularizer) -> None:
    # A lambda or an unregistered function saves, then fails at reload (in
    # safe mode, or in another process): refuse it now, as unserializable
    # schedules are.
    try:
        with warnings.catch_warnings():  # Keras' own warning about lambdas: we raise instead
            warnings.simplefilter("ignore")
            keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(regularizer))
    except Exception as error:
        raise TypeError(
            f"Invalid value for argument `regularizers`: item {index}, "
            f"{regularizer!r}, cannot be saved and reloaded with the model, so a "
            "model using it could not be loaded again. Use a "
            "`keras.regularizers.Regularizer` (ours or Keras'), or register your "
            "class or function with `@keras.saving.register_keras_serializable()`. "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Combined(keras.regularizers.Regularizer):
    """The sum of several regularizers on one weight.

    `ShrinkPhase` uses it to add its penalty to one the user already has; it
    is just as usable directly.

    Args:
        regularizers: A list of regularizers (ours, Keras' or any registered
            serializable callable that returns a scalar).

    Raises:
        TypeError: If `regularizers` is not a non-empty list of callables, or
            one of them could not be saved and reloaded with the model (a
            lambda, an unregistered function or class).

    Example:

    >>> reg = rk.regularizers.Combined([rk.regularizers.L1(0.1), keras.regularizers.L2(0.1)])
    >>> round(float(reg(keras.ops.ones((2, 2)))), 6)
    0.8
    """

    def __init__(self, regularizers):
        regularizers = list(regularizers) if isinstance(regularizers, (list, tuple)) else regularizers
        if not isinstance(regularizers, list) or not regularizers or not all(
            callable(r) for r in regularizers
        ):
            raise TypeError(
                "Invalid value for argument `regularizers`: expected a non-empty "
                f"list of regularizers. Received: regularizers={regularizers!r}"
            )
        for index, regularizer in enumerate(regularizers):
            _check_part_serializable(index, regularizer)
        self.regularizers = regularizers

    def __call__(self, x):
        return sum(ops.cast(r(x), "float32") for r in self.regularizers)

    def get_config(self) -> dict:
        return {
            "regularizers": [keras.saving.serialize_keras_object(r) for r in self.regularizers]
        }

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, ["regularizers"])
        if not isinstance(config.get("regularizers"), list):
            raise ValueError(
                "Invalid config for Combined: expected a list under 'regularizers'. "
                f"Received: config={config}"
            )
        return cls([keras.saving.deserialize_keras_object(r) for r in config["regularizers"]])

    def __repr__(self) -> str:
        return f"Combined([{', '.join(repr(r) for r in self.regularizers)}])"
