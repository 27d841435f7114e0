"""Exact zeros without training, and holding them through further training.

Zeros are held by Keras constraints, which the optimizer applies after every
step: no wrapper layers, so names, configs and summaries stay the user's own.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate
from keras_regkit.attach import rebuild_step_functions, step_functions_read_variables_live
from keras_regkit import weights as weights_lib
from keras_regkit.stats import weight_name
from keras_regkit.weights import LayerSelector, WeightRef


class HoldZeros(keras.constraints.Constraint):
    """Keeps the entries that were zero when it was made at zero.

    It multiplies the weight by a fixed 0/1 mask after each optimizer step,
    then applies the constraint the weight had before (if any). It lives only
    on the variable, not in the layer's config: a saved model keeps its zeros
    but not the hold, and reloads without keras_regkit.

    Args:
        variable: The variable whose current zeros are to be held.
        inner: The constraint the variable had before, applied after the mask.

    Example:

    >>> v = keras.Variable([0.0, 2.0])
    >>> keras.ops.convert_to_numpy(rk.HoldZeros(v)(keras.ops.convert_to_tensor([5.0, 3.0]))).tolist()
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
        # be copied into every traced graph.
        self.mask = keras.Variable(
            ops.cast(ops.not_equal(variable.value, 0), variable.dtype),
            trainable=False,
            name="hold_zeros_mask",
        )

    def __call__(self, w):
        w = w * ops.cast(self.mask, w.dtype)
        return self.inner(w) if self.inner is not None else w


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What `prune` did.

    Attributes:
        threshold: The magnitude at or below which entries were set to zero.
        zeros: Exact zeros in the pruned weights afterwards.
        params: Entries in the pruned weights.
        refs: The weights pruned.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> result = rk.prune(model, threshold=10.0)
    >>> result.zeros == result.params == 32, result.sparsity
    (True, 1.0)
    """

    threshold: float
    zeros: int
    params: int
    refs: list[WeightRef]

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


GRANULARITIES = ("weight", "unit")
# Kinds whose last axis indexes output units (Dense units, conv filters).
_UNIT_KINDS = ("kernel", "pointwise_kernel")


def prune(
    model: keras.Model,
    threshold: float | None = None,
    sparsity: float | None = None,
    weights: Union[str, Sequence[str]] = "kernel",
    layers: LayerSelector = "*",
    hold: bool = False,
    granularity: str = "weight",
) -> PruneResult:
    """Sets the smallest-magnitude weights (or whole units) to exact zeros,
    without training.

    Give exactly one of `threshold` (entries, or units, with magnitude
    `<= threshold` become 0) or `sparsity` (the fraction of the selected
    entries, or units, taken together, to zero: one global threshold, so
    layers with many small weights lose more of them).

    With `granularity="unit"`, a unit is an output unit of a `Dense` layer or
    a filter of a convolution: the slice of the kernel along its last axis.
    Its magnitude is the RMS of that slice relative to its layer: divided by
    the mean RMS of the layer's units (dead ones included). Layers of
    different fan-in and scale then compare fairly, and `threshold=0.5`
    means "units below half their layer's average". The layers that
    produce the model's outputs are left whole (their units are the
    outputs). Dead units can then be removed with
    `keras_regkit.compact`.

    Args:
        model: The model to change, in place.
        threshold: Magnitude threshold, a float >= 0 (for units, relative
            to the layer, as above).
        sparsity: Target fraction of zeros (of entries, or of units) over all
            selected weights, in [0, 1]. Ties at the threshold may give a
            little more.
        weights: Weight kinds to prune. Defaults to `"kernel"`. With
            `granularity="unit"`: `"kernel"` and/or `"pointwise_kernel"`.
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.
        hold: If True, keep the zeros at zero during further training (with
            `HoldZeros` constraints) until `release_zeros(model)`.
        granularity: `"weight"` (entries) or `"unit"` (whole output units and
            filters). Defaults to `"weight"`.

    Returns:
        A `PruneResult` with the threshold used and the zeros made.

    Raises:
        TypeError, ValueError: If not exactly one of `threshold` and
            `sparsity` is given, or either is out of range, `hold` is not
            True or False, the model is not built yet, the selector matches
            nothing, a selected weight holds NaN or inf entries, or
            `granularity` is unknown or cannot apply (weight kinds without
            units, a subclassed model whose output layers are unknown).
            Nothing is changed then.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> result = rk.prune(model, sparsity=0.5)
    >>> round(result.sparsity, 2)
    0.5
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
    ...     keras.layers.Dense(2, name="out")])
    >>> result = rk.prune(model, sparsity=0.5, granularity="unit")
    >>> rk.dead_units(model)  # the output layer is left whole
    {'hidden': (4, 8), 'out': (0, 2)}
    """
    if (threshold is None) == (sparsity is None):
        raise ValueError(
            "Give exactly one of `threshold` or `sparsity`. Received: "
            f"threshold={threshold!r}, sparsity={sparsity!r}"
        )
    # Every argument is checked before any weight changes.
    if threshold is not None:
        threshold = _validate.real("threshold", threshold)
    else:
        sparsity = _validate.real("sparsity", sparsity, maximum=1.0)
    hold = _validate.boolean("hold", hold)
    refs = select_prunable(model, layers, weights, granularity)
    _check_finite(refs)
    scores = [_magnitudes(ref.variable, granularity) for ref in refs]
    if threshold is None:
        threshold = _global_threshold(scores, sparsity)
    zeros = params = 0
    for ref, score in zip(refs, scores):
        value = ref.variable.value
        kept = ops.broadcast_to(score > threshold, value.shape)
        ref.variable.assign(ops.where(kept, value, ops.zeros_like(value)))
        params += int(np.prod(value.shape))
        zeros += int(ops.convert_to_numpy(ops.sum(ops.cast(ops.logical_not(kept), "int32"))))
    if hold:
        hold_zeros(model, [ref.variable for ref in refs])
    return PruneResult(float(threshold), zeros, params, refs)


def _check_finite(refs: list[WeightRef]) -> None:
    # A NaN compares False with any threshold, so it would be cut and counted
    # as a zero made: a diverged model would pass for a pruned one.
    nonfinite = [ops.sum(ops.cast(ops.logical_not(ops.isfinite(ref.variable.value)), "int32")) for ref in refs]
    counts = ops.convert_to_numpy(ops.stack(nonfinite))  # one host transfer
    bad = {weight_name(ref): int(n) for ref, n in zip(refs, counts) if n}
    if bad:
        raise ValueError(
            f"Cannot prune weights that hold NaN or inf entries (counts per weight: {bad}): "
            "their magnitudes have no order, and cutting them would hide a diverged model "
            "as a sparse one. Restore finite weights first (e.g. from a checkpoint)."
        )


def hold_zeros(model: keras.Model, variables) -> None:
    """Holds the current zeros of `variables` (a new mask where one is
    already held) and makes the next train step apply the masks."""
    new_holds = False
    for variable in variables:
        new_holds |= _hold(variable)
    if new_holds:
        # The optimizer step traced the old constraints.
        rebuild_step_functions(model, losses_changed=False)


def select_prunable(
    model: keras.Model,
    layers: LayerSelector,
    weights: Union[str, Sequence[str]],
    granularity: str,
) -> list[WeightRef]:
    """The weights `prune` acts on: the selection, and for unit granularity
    only kernels with units, never those of the output layers."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"Invalid value for argument `granularity`: expected one of "
            f"{list(GRANULARITIES)}. Received: granularity={granularity!r}"
        )
    refs = weights_lib.select_weights(model, layers, weights)
    if granularity == "weight":
        return refs
    other_kinds = sorted({ref.kind for ref in refs} - set(_UNIT_KINDS))
    if other_kinds:
        raise ValueError(
            f"granularity='unit' prunes output units, which only "
            f"{list(_UNIT_KINDS)} weights have. Received: weights={weights!r} "
            f"(with {other_kinds})"
        )
    outputs = weights_lib.output_layers(model)
    if outputs is None:
        raise ValueError(
            f"granularity='unit' must leave the layers that produce the "
            f"outputs whole, and subclassed model '{model.name}' does not say "
            "which they are. Use a Functional or Sequential model."
        )
    refs = [ref for ref in refs if all(ref.layer is not out for out in outputs)]
    if not refs:
        raise ValueError(
            f"granularity='unit': the selected layers all produce model "
            f"outputs ({[layer.name for layer in outputs]}), whose units "
            "cannot be removed. Select hidden layers."
        )
    return refs


def _magnitudes(variable, granularity):
    """Per-entry |w|, or per-unit RMS over the kernel's last axis divided by
    the mean of those RMS over the layer's units (shaped to broadcast back
    over the kernel)."""
    magnitude = ops.absolute(ops.cast(variable.value, "float32"))
    if granularity == "weight":
        return magnitude
    axes = tuple(range(len(variable.shape) - 1))
    rms = ops.sqrt(ops.mean(ops.square(magnitude), axis=axes, keepdims=True))
    # Relative to the layer: a ReLU network computes the same function with
    # one layer's weights scaled up and the next one's down, so raw RMS would
    # rank layers by their scale (in practice, Dense units below conv
    # filters), not units by their share of their layer. Dead units count in
    # the mean: the fewer a layer keeps, the larger its survivors score.
    layer_mean = ops.mean(rms)
    return ops.where(layer_mean > 0, rms / ops.maximum(layer_mean, 1e-30), ops.zeros_like(rms))


def _global_threshold(scores, sparsity: float) -> float:
    if sparsity == 0:
        return -1.0  # nothing is <= -1, so nothing is pruned
    magnitudes = ops.concatenate([ops.reshape(score, (-1,)) for score in scores])
    # The k-th smallest magnitude, k = ceil(sparsity * n): zeroing |w| <= it
    # zeroes at least the requested fraction.
    k = max(1, int(-(-sparsity * int(magnitudes.shape[0]) // 1)))
    smallest = -ops.top_k(-magnitudes, k, sorted=True)[0]
    return float(ops.convert_to_numpy(smallest[-1]))


def _hold(variable) -> bool:
    """Holds the variable's current zeros; True if the optimizer step must be
    retraced (a new constraint was set, or under JAX a new mask)."""
    if isinstance(variable.constraint, HoldZeros):
        # Same constraint, new mask: TensorFlow's and PyTorch's steps read it
        # live; JAX's holds it as a constant and must be retraced.
        variable.constraint.mask.assign(
            ops.cast(ops.not_equal(variable.value, 0), variable.constraint.mask.dtype)
        )
        return not step_functions_read_variables_live()
    variable.constraint = HoldZeros(variable, variable.constraint)
    return True


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
    released = 0
    for variable in model.weights:
        if isinstance(getattr(variable, "constraint", None), HoldZeros):
            variable.constraint = variable.constraint.inner
            released += 1
    if released:
        rebuild_step_functions(model, losses_changed=False)
    return released

