"""Penalties on each entry of a weight: L1, L2, the elastic net, ExpAbs."""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from keras_regkit import _penalty_math as penalty_math
from keras_regkit.regularizers.base import PACKAGE, Penalty, Strength


@keras.saving.register_keras_serializable(package=PACKAGE)
class L1(Penalty):
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2(Penalty):
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ElasticNet(Penalty):
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpAbs(Penalty):
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
