"""The group lasso: whole units (or input features) to zero together."""

from __future__ import annotations

import math
import numbers

import keras

from keras_regkit import _penalty_math as penalty_math
from keras_regkit.regularizers.base import PACKAGE, Penalty, Strength


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupLasso(Penalty):
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

    def groups(self, x) -> tuple[int, float]:
        """The group axis for `x` (non-negative) and `sqrt(n_g)`.

        Raises:
            ValueError: If `axis` does not fit the shape of `x`.
        """
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
        axis, size_factor = self.groups(x)
        return penalty_math.group_lasso(x, alpha * size_factor, axis)

    def _proximal(self, x, step_size, alpha):
        axis, size_factor = self.groups(x)
        group_step = penalty_math.group_step_size(step_size, x.shape, axis)
        return penalty_math.group_soft_threshold(x, alpha * size_factor * group_step, axis)

    def _extra_config(self) -> dict:
        return {"axis": self.axis}
