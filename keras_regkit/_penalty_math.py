"""The penalties' arithmetic, and under TensorFlow its fused kernels.

`keras_regkit.regularizers` holds the classes a user sees; this module holds
what they compute: the values, their hand-written gradients, and the guards
that keep a runaway weight from turning a penalty into inf or NaN.

Under TensorFlow, inside the train step and for large weights, each penalty
runs as two XLA-compiled kernels (value, gradient) instead of the dozens of
passes over the weight that op-by-op execution and autodiff would take
(`fuses`, `one_kernel`). JAX compiles the whole step and fuses them
itself; PyTorch runs the same `keras.ops` code op by op.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _magnitude(x):
    """`|x|` whose gradient is `sign(x)`: 0 at exact zeros on every backend.

    JAX differentiates `abs` as 1 at 0, so an L1-like penalty would push
    pruned weights off zero there; TensorFlow and PyTorch already give 0.
    """
    if keras.backend.backend() == "jax":
        return x * ops.sign(x)
    return ops.absolute(x)


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


# Beyond |x| / scale = LINEAR_FROM the penalty grows linearly (with the slope
# it has there) instead of exponentially, and beyond SATURATE_AT it stops
# growing (at about 4.85e28 * alpha per entry), so a runaway weight can't make
# its term or its gradient inf/NaN.
LINEAR_FROM = 20.0
SATURATE_AT = 1e20
# float16 variables receive float16 gradients: there the exponential part ends
# where the gradient would reach half of float16's largest value.
GRADIENT_LIMIT = {"float16": 65504.0 / 2}
# ExpAbs' `scale`: 1 / scale must be a normal float32.
MIN_SCALE, MAX_SCALE = 1e-30, 1e30


def _rows(x):
    """The axis of a per-row sum of `x` (see `_exp_abs_sums`)."""
    return -1 if len(x.shape) > 1 else None


def _exp_abs_parts(x, inv_scale, end):
    """`w`, the float32 of `x`; `u = |w| / scale`; `u` clipped where the
    penalty stops growing; and clipped again where it turns linear."""
    w = ops.cast(x, "float32")
    u = ops.absolute(w) * inv_scale
    clipped = ops.minimum(u, SATURATE_AT)
    return w, u, clipped, ops.minimum(clipped, end)


def _exp_abs_slope(w, u, exp_of_exponential, factor):
    """The gradient of `factor * scale * terms`: `factor * sign(w) *
    exp(min(u, end))` on both sides of `end`, and 0 past the saturation,
    where the penalty is constant. sign(w) is 0 at exact zeros (see
    `_magnitude`)."""
    # `u > SATURATE_AT`, not `u <= ...`: a NaN weight gets a NaN gradient, as autodiff gives.
    return ops.where(u > SATURATE_AT, 0.0, factor * ops.sign(w) * exp_of_exponential)


# Under TensorFlow the forward and the backward pass each run one
# XLA-compiled kernel (`one_kernel`) that reads the weight once, in its own
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
    _, _, terms = _exp_abs_terms(x, inv_scale, end, _expm1_of_nonnegative)
    return ops.sum(terms, axis=_rows(x))


def _exp_abs_terms(x, inv_scale, end, expm1=ops.expm1):
    """`w`, `u` (see `_exp_abs_parts`) and each entry's term of the penalty
    (without `alpha`): `expm1(u)` up to `end`, linear past it, constant past
    the saturation. `clipped - exponential` is `relu(clipped - end)`,
    exactly: 0 but where the penalty is linear."""
    w, u, clipped, exponential = _exp_abs_parts(x, inv_scale, end)
    return w, u, expm1(exponential) + ops.exp(end) * (clipped - exponential)


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


def one_kernel(fn):
    """`fn` as one XLA-compiled kernel under TensorFlow; `fn` itself elsewhere.

    TensorFlow without XLA (the default train step on CPU) runs each op as
    its own pass over memory; XLA fuses `fn` into one. JAX compiles the
    whole train step anyway, and PyTorch runs `fn` as it is.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


_exp_abs_sums_kernel = one_kernel(_exp_abs_sums)
_exp_abs_gradient_kernel = one_kernel(_exp_abs_gradient)


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


_l1_l2_sums_kernel = one_kernel(_l1_l2_sums)
_l1_l2_gradient_kernel = one_kernel(_l1_l2_gradient)
_group_norms_kernel = one_kernel(_group_norms)
_group_lasso_gradient_kernel = one_kernel(_group_lasso_gradient)


def fuses(x) -> bool:
    """Whether the penalty of `x` runs as fused kernels of its own
    (`one_kernel`): under TensorFlow, inside a traced function (the train
    step), where a step without XLA would make every op of the penalty and
    of its gradient a pass over the weight, and for a weight of at least
    `FUSED_FROM` entries. JAX fuses its whole train step anyway.

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

    return not tf.executing_eagerly() and math.prod(x.shape) >= FUSED_FROM


FUSED_FROM = 256 * 256


def l1_l2(x, l1=None, l2=None):
    """`l1 * sum(|x|) + l2 * sum(x ** 2)` in float32, of `x` as stored; a
    term whose strength is None is left out."""
    if fuses(x):
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


def exp_abs(x, alpha, inv_scale, end):
    """`alpha * sum(exp(|x| * inv_scale) - 1)`, exponential up to
    `|x| * inv_scale = end` and linear beyond (see `LINEAR_FROM`)."""
    factor = alpha * inv_scale
    if fuses(x):

        def forward(x):
            value = alpha * ops.sum(_exp_abs_sums_kernel(x, inv_scale, end))
            return value, lambda upstream: _exp_abs_gradient_kernel(x, upstream, factor, inv_scale, end)

    else:

        def forward(x):
            if keras.backend.backend() == "torch":
                plain = _exp_abs_plain_on_torch_cpu(x, alpha, inv_scale, end)
                if plain is not None:
                    return plain
            # No branch on whether some entry is past the exponential
            # region: the terms are exact everywhere, and their `expm1`, the
            # one costly op, serves the value's sum and the slope, as in
            # autodiff of `sum(expm1(u))`. JAX's step costs that floor; a
            # `cond` on the weights' max (0.8.2-0.10.6) cost it 30-40 % more.
            w, u, terms = _exp_abs_terms(x, inv_scale, end)
            value = alpha * ops.sum(ops.sum(terms, axis=_rows(x)))

            def gradient(upstream):
                # exp(min(u, end)) from the term: expm1(u) + 1 up to `end`,
                # expm1(end) + 1 past it (the term is larger there). The
                # upstream last (see `_exp_abs_gradient`).
                slope = ops.minimum(terms, ops.expm1(end)) + 1.0
                return ops.cast(upstream * _exp_abs_slope(w, u, slope, factor), x.dtype)

            return value, gradient

    return _with_gradient(forward, x)


def _exp_abs_plain_on_torch_cpu(x, alpha, inv_scale, end):
    """ExpAbs' value and gradient where PyTorch runs each op on the CPU as
    a pass over the weight, in 7 passes (the general code takes 17): no
    multiply by a scale of 1; the slope `alpha / scale * sign(w) * exp(u)`
    made from the value's `expm1(u)` (as PyTorch's own `expm1` backward
    does), scaled and summed in one `addcmul`. None where an entry is past
    the exponential region (or NaN), and on an accelerator, where the check
    would wait for the device: the general code takes those."""
    import torch

    w = ops.cast(x, "float32")
    if w.device.type != "cpu":
        return None
    u = torch.abs(w)
    scaled = float(inv_scale) != 1.0
    if scaled:
        u.mul_(inv_scale)  # `abs` made a new tensor
    if u.numel() and not bool(u.max() <= end):  # NaN: not plain
        return None
    exponential = torch.expm1(u)
    rows = exponential.sum(dim=-1) if exponential.dim() > 1 else exponential
    factor = alpha * inv_scale if scaled else alpha

    def gradient(upstream):
        # sign(w) * c * (1 + expm1(u)), as s + s * expm1(u): 0 at exact zeros.
        signs = torch.sign(w).mul_(factor * upstream)
        return ops.cast(torch.addcmul(signs, signs, exponential), x.dtype)

    return alpha * rows.sum(), gradient


def group_lasso(x, factor, axis):
    """`factor * sum_g ||x_g||` over the groups sharing an index on `axis`."""
    if fuses(x):
        factor = ops.convert_to_tensor(factor, "float32")

        def forward(x):
            norms = _group_norms_kernel(x, axis)
            return factor * ops.sum(norms), lambda upstream: _group_lasso_gradient_kernel(
                x, norms, upstream * factor, axis
            )

        return _with_gradient(forward, x)
    return factor * ops.sum(_group_norms(x, axis))


# -- proximal steps ---------------------------------------------------------
# A proximal penalty is not differentiated: after each optimizer step the
# weight is mapped to the nearest point that pays the penalty of one step,
# which sets small entries (or whole groups) to exactly 0. `step_size` is the
# optimizer's own step on this weight: the learning rate for SGD, a tensor of
# the weight's shape for adaptive optimizers (ProxGen).


def soft_threshold(x, threshold):
    """`sign(x) * max(|x| - threshold, 0)`, computed in float32 and rounded
    once to the dtype of `x`. `threshold` is a scalar or a tensor of the
    shape of `x`. 0 stays 0; NaN stays NaN (it is never hidden as a zero)."""
    w = ops.cast(x, "float32")
    # `w - clip(w, -t, t)` is `sign(w) * max(|w| - t, 0)`, rounded alike
    # (`w - t` and `-(|w| - t)` are one IEEE subtraction each), in three
    # passes over the weight instead of five: off XLA, every op is one.
    return ops.cast(w - ops.clip(w, -threshold, threshold), x.dtype)


def group_step_size(step_size, shape, axis):
    """One step size per group (entries sharing an index on `axis`).

    A scalar stays a scalar. A per-entry step size (an adaptive optimizer's)
    has no closed-form group proximal map; the group takes the step of the
    scalar metric nearest the optimizer's diagonal one: the harmonic mean of
    its entries' steps (the mean of their preconditioners). Exact when they
    are equal."""
    if len(getattr(step_size, "shape", ())) == 0:
        return step_size
    others = [i for i in range(len(shape)) if i != axis]
    return 1.0 / ops.mean(1.0 / ops.cast(step_size, "float32"), axis=others)


def group_soft_threshold(x, threshold, axis):
    """`x_g * max(1 - threshold_g / ||x_g||, 0)` for each group `g` (entries
    sharing an index on `axis`); `threshold` is a scalar or one per group. A
    group whose norm is at most its threshold becomes exactly 0; a group
    holding NaN stays NaN."""
    w = ops.cast(x, "float32")
    norms = _group_norms(x, axis)  # NaN for a group holding NaN, 0 for a dead one
    positive = norms > 0
    keep = ops.where(positive, ops.maximum(1.0 - threshold / ops.where(positive, norms, 1.0), 0.0), norms)
    shape = [-1 if i == axis else 1 for i in range(len(w.shape))]
    return ops.cast(w * ops.reshape(keep, shape), x.dtype)
