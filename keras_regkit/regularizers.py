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

from keras_regkit import _penalty_math as penalty_math
from keras_regkit import _validate

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule
Strength = Union[float, LearningRateSchedule]

_PACKAGE = "keras_regkit"


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


def _in_symbolic_build() -> bool:
    try:  # private, and only for a warning: without it, warn always
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:
        return False
    return in_symbolic_scope()


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
    Those that can act as a proximal step name the strengths it applies in
    `_proximal_strengths` and implement `_proximal` (and, if part of the
    penalty stays a gradient term, `_penalty` handles `self.proximal`).
    """

    _strength_names: tuple[str, ...] = ()
    _proximal_strengths: tuple[str, ...] = ()

    def __init__(self, step: int = 0, proximal: bool = False, **strengths):
        self._strengths = {
            name: _check_strength(name, strengths[name])
            for name in self._strength_names
        }
        self.proximal = _validate.boolean("proximal", proximal)
        self._warned_unbound = False
        # Set by `keras_regkit.proximal.bind_proximal`: until then a proximal
        # penalty acts nowhere (see `__call__`).
        self._proximal_bound = False
        step = _validate.integer("step", step, maximum=_max_step())
        # Unbound, the step is `_own_step`. Bound to a counter (the
        # optimizer's iterations), it is `counter + _own_step`: the offset
        # keeps the schedule's position when the counter starts elsewhere (a
        # fresh optimizer on a reloaded model), and `set_step` moves only
        # this regularizer, never the shared counter.
        self._own_step = None
        self._counter = None
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
        if self.proximal:
            self._warn_if_unbound()
            if set(self._proximal_strengths) == set(self._strength_names):
                # The proximal step replaces the whole gradient term.
                return ops.zeros((), "float32")
        strengths = {n: self._strength_tensor(n) for n in self._strength_names}
        return self._penalty(_read(x), **strengths)

    def _warn_if_unbound(self) -> None:
        # Not while Keras builds the model's state symbolically (JAX and
        # PyTorch do so in `fit` before any callback has bound the penalty).
        if self._proximal_bound or self._warned_unbound or _in_symbolic_build():
            return
        self._warned_unbound = True
        warnings.warn(
            f"{self!r} is not bound to an optimizer, so its proximal part does nothing: it is "
            "not in the loss, and acts by a step after each optimizer step once bound. Pass "
            "`keras_regkit.callbacks.ProximalUpdate()` to `fit`, or call "
            "`keras_regkit.bind_proximal(model, optimizer)` before a custom training loop.",
            stacklevel=3,
        )

    def proximal_step(self, x, step_size):
        """`x` after the proximal step of this penalty's proximal part, at
        the current strengths: the `z` that minimises
        `penalty(z) + sum((z - x) ** 2 / (2 * step_size))`.

        Args:
            x: The weight right after the optimizer's step.
            step_size: The step the optimizer just took on it: a scalar (its
                learning rate, for SGD) or a tensor of the shape of `x` (its
                per-entry step, for adaptive optimizers).

        Returns:
            A tensor of the shape and dtype of `x`, with exact zeros where
            the penalty sets them.
        """
        if not self._proximal_strengths:
            raise ValueError(f"{type(self).__name__} has no proximal step (L1, ElasticNet and GroupLasso have).")
        step_size = ops.cast(step_size, "float32")
        strengths = {n: self._strength_tensor(n) for n in self._proximal_strengths}
        return self._proximal(_read(x), step_size, **strengths)

    def _proximal(self, x, step_size, **strengths):
        raise NotImplementedError

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
        if self._proximal_strengths:
            config["proximal"] = self.proximal
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
        if self.proximal:
            args += ", proximal=True"
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

    With `proximal=True` the penalty adds nothing to the loss; instead,
    after each optimizer step, every entry is soft-thresholded by
    `alpha` times the step the optimizer just took on it:
    `w <- sign(w) * max(|w| - alpha * step, 0)`, which leaves exact zeros
    (a gradient-term L1 only makes weights small). The module
    `keras_regkit.proximal` says what the step is per optimizer.

    Args:
        alpha: Strength, a float >= 0 or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to 0.01.
        proximal: Apply the penalty as a proximal step after each optimizer
            step instead of a term of the loss. Needs
            `keras_regkit.callbacks.ProximalUpdate()` in `fit` (or
            `keras_regkit.bind_proximal` before a custom loop). Defaults
            to False.
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable
            schedule, or `proximal` is not True or False.
        ValueError: If `alpha` is negative, NaN, or beyond float32's range.

    Example:

    >>> reg = rk.regularizers.L1(0.1)
    >>> round(float(reg(keras.ops.ones((2, 2)))), 6)
    0.4
    >>> prox = rk.regularizers.L1(0.1, proximal=True)
    >>> w = keras.ops.convert_to_tensor([0.5, -0.05, -2.0])
    >>> [round(float(v), 6) for v in keras.ops.convert_to_numpy(prox.proximal_step(w, 1.0))]  # step size 1
    [0.4, 0.0, -1.9]

    References:
        Tibshirani, "Regression shrinkage and selection via the lasso",
        JRSS-B 1996; Yun, Lozano & Yang, "Adaptive proximal gradient
        methods for structured neural networks" (ProxGen), NeurIPS 2021.
    """

    _strength_names = ("alpha",)
    _proximal_strengths = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, *, proximal: bool = False, step: int = 0):
        super().__init__(step=step, proximal=proximal, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _penalty(self, x, alpha):
        return penalty_math.l1_l2(x, l1=alpha)

    def _proximal(self, x, step_size, alpha):
        return penalty_math.soft_threshold(x, alpha * step_size)


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
        return penalty_math.l1_l2(x, l2=alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ElasticNet(_Penalty):
    """Elastic net: `l1 * sum(|x|) + l2 * sum(x ** 2)`.

    Each strength is a float or its own schedule. With floats it equals
    `keras.regularizers.L1L2(l1, l2)`.

    With `proximal=True` the L1 part is a proximal step after each
    optimizer step (soft-thresholding, as `L1(l1, proximal=True)`) and only
    the L2 part stays in the loss.

    Args:
        l1: L1 strength, a float >= 0 or a schedule. Defaults to 0.01.
        l2: L2 strength, a float >= 0 or a schedule. Defaults to 0.01.
        proximal: Apply the L1 part as a proximal step (see `L1`).
            Defaults to False.
        step: Position of the schedules (saved with the model). Defaults to 0.

    Raises:
        TypeError: If a strength is neither a number nor a serializable
            schedule, or `proximal` is not True or False.
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
    _proximal_strengths = ("l1",)

    def __init__(self, l1: Strength = 0.01, l2: Strength = 0.01, *, proximal: bool = False, step: int = 0):
        super().__init__(step=step, proximal=proximal, l1=l1, l2=l2)

    @property
    def l1(self) -> Strength:
        return self._strengths["l1"]

    @property
    def l2(self) -> Strength:
        return self._strengths["l2"]

    def _penalty(self, x, l1, l2):
        if self.proximal:
            return penalty_math.l1_l2(x, l2=l2)
        return penalty_math.l1_l2(x, l1=l1, l2=l2)

    def _proximal(self, x, step_size, l1):
        return penalty_math.soft_threshold(x, l1 * step_size)


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
        if not (math.isfinite(scale) and penalty_math.MIN_SCALE <= scale <= penalty_math.MAX_SCALE):
            raise ValueError(
                f"Invalid value for argument `scale`: expected a float > 0 in [{penalty_math.MIN_SCALE:g}, "
                f"{penalty_math.MAX_SCALE:g}] (its reciprocal is used in float32). Received: scale={scale}"
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

        return penalty_math.exp_abs(x, alpha, inv_scale, end)

    def _end_of_exponential(self, dtype, alpha):
        limit = penalty_math.GRADIENT_LIMIT.get(keras.backend.standardize_dtype(dtype))
        if limit is None:
            return penalty_math.LINEAR_FROM
        # The gradient is alpha / scale * exp(u): stop where it reaches limit.
        end = ops.log(limit * self.scale / ops.maximum(alpha, 1e-30))
        return ops.clip(end, 0.0, penalty_math.LINEAR_FROM)

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

    `axis=0` on a `Dense` kernel makes each input a group: the penalty
    then drops whole input features (`keras_regkit.sparsity_report` lists
    them as `dropped_inputs`).

    With `proximal=True` the penalty adds nothing to the loss; after each
    optimizer step every group is shrunk towards 0 by its threshold,
    `w_g <- w_g * max(1 - alpha * sqrt(n_g) * step / ||w_g||, 0)`, so
    groups end at exactly 0 during training. For adaptive optimizers the
    group's step is the harmonic mean of its entries' steps (their
    per-entry proximal map has no closed form).

    Args:
        alpha: Strength, a float >= 0 or a schedule. Defaults to 0.01.
        axis: The axis that indexes the groups. Defaults to -1 (output units
            and filters).
        proximal: Apply the penalty as a proximal step after each optimizer
            step (see `L1`). Defaults to False.
        step: Position of the schedule (saved with the model). Defaults to 0.

    Raises:
        TypeError: If `alpha` is neither a number nor a serializable
            schedule, `axis` is not an integer, or `proximal` is not True
            or False.
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
    _proximal_strengths = ("alpha",)

    def __init__(self, alpha: Strength = 0.01, axis: int = -1, *, proximal: bool = False, step: int = 0):
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(
                "Invalid value for argument `axis`: expected an int. "
                f"Received: axis={axis!r} of type {type(axis).__name__}"
            )
        self.axis = int(axis)
        super().__init__(step=step, proximal=proximal, alpha=alpha)

    @property
    def alpha(self) -> Strength:
        return self._strengths["alpha"]

    def _groups(self, x) -> tuple[int, float]:
        """The group axis for `x` (non-negative) and `sqrt(n_g)`."""
        rank = len(x.shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"GroupLasso(axis={self.axis}) does not fit a weight of shape "
                f"{tuple(x.shape)}: expected axis in [{-rank}, {rank - 1}]."
            )
        axis = self.axis % rank
        group_size = math.prod(d for i, d in enumerate(x.shape) if i != axis)
        return axis, math.sqrt(group_size)

    def _penalty(self, x, alpha):
        axis, size_factor = self._groups(x)
        return penalty_math.group_lasso(x, alpha * size_factor, axis)

    def _proximal(self, x, step_size, alpha):
        axis, size_factor = self._groups(x)
        group_step = penalty_math.group_step_size(step_size, x.shape, axis)
        return penalty_math.group_soft_threshold(x, alpha * size_factor * group_step, axis)

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
