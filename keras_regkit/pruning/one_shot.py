"""Pruning at once, without training: `prune`."""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate
from keras_regkit.pruning import allocation as allocation_lib
from keras_regkit.pruning import calibration
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import select
from keras_regkit.pruning import layer_sensitivity
from keras_regkit.pruning.hold import hold_zeros
from keras_regkit.weights import LayerSelector, WeightRef


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What `prune` did.

    Attributes:
        threshold: The score at or below which entries (or units) were set to
            zero: a magnitude `|w|`, or for units a mean square relative to
            the layer's average unit. 0.0 when nothing was cut.
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


def prune(
    model: keras.Model,
    threshold: float | None = None,
    sparsity: float | None = None,
    weights: Union[str, Sequence[str]] = "kernel",
    layers: LayerSelector = "*",
    hold: bool = False,
    granularity: str = "weight",
    score: str = "magnitude",
    calibration_data=None,
    ranking: str = "global",
    calibration_steps: int | None = None,
    method: str = "cut",
    allocation: Union[str, dict, allocation_lib.OWL, allocation_lib.Sensitivity] = "global",
) -> PruneResult:
    """Sets the lowest-scoring weights (or whole units, or all but N of
    every M inputs) to exact zeros at once, without training.

    Give exactly one of `threshold` (entries, or units, scored `<=
    threshold` become 0) or `sparsity` (the fraction of the selected
    entries, or units, taken together, to zero: one global threshold, so
    layers with many small weights lose more of them); with an `"N:M"`
    granularity, neither cuts the full pattern.

    With `granularity="unit"`, a unit is an output unit of a `Dense` layer,
    a filter of a convolution, an output channel of a depthwise convolution
    (see `keras_regkit.pruning.units`): the slice of the kernel that
    computes it. Its score is the mean square of that slice relative to its
    layer: divided by the mean over the layer's units (dead ones included).
    Layers of different fan-in and scale then compare fairly, and
    `threshold=0.5` means "units below half their layer's average"; the
    shrink ranks units the same way. The layers that produce the model's
    outputs are left whole (their units are the outputs). Dead units can
    then be removed with `keras_regkit.compact`.

    Where the selection meets a `MultiHeadAttention` (KerasHub's
    `TransformerEncoder`/`TransformerDecoder` hold one), its units are its
    heads: a head's score runs over its slices of the query, key, value and
    output kernels together, relative to the layer's average head; a cut
    zeroes all of them, and it may take a layer's every head.
    `granularity="head"` cuts heads only. `compact` then rebuilds each
    attention layer with fewer heads, or as its output bias once it has none.

    Args:
        model: The model to change, in place.
        threshold: Magnitude threshold, a float >= 0 (for units, relative
            to the layer, as above).
        sparsity: Target fraction of zeros (of entries, or of units) over all
            selected weights, in [0, 1]: exactly that many are cut, ties
            broken by position.
        weights: Weight kinds to prune. Defaults to `"kernel"`. With
            `granularity="unit"`: `"kernel"` and/or `"pointwise_kernel"`.
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.
        hold: If True, keep the zeros at zero during further training (with
            `HoldZeros` constraints) until `release_zeros(model)`.
        granularity: `"weight"` (entries), `"unit"` (whole output units and
            filters, and attention heads), `"head"` (attention heads only),
            `"block"` (whole transformer or residual blocks; the sparsity
            is the share of blocks; `keras_regkit.pruning.Blocks(
            calibration_data=x)` ranks them on data, see
            `keras_regkit.pruning.blocks`) or `"N:M"` (e.g. `"2:4"`: at most N non-zeros in every
            group of M consecutive inputs of a kernel, along its input axis:
            a Dense kernel's rows, a convolution's input channels; M must
            divide that axis). With `"N:M"` and neither `threshold` nor
            `sparsity`, the full pattern (`1 - N/M` zeros) is cut; a lower
            `sparsity` cuts part of the way, never past the pattern.
            Defaults to `"weight"`.
        score: `"magnitude"` (`|w|`) or `"wanda"` (`|w| · ||x||₂`, the
            weight times the norm of the input channel it reads over
            `calibration_data`; Sun et al., 2023). Defaults to
            `"magnitude"`.
        calibration_data: Unlabeled inputs (arrays as `model(x)` takes
            them, or a `tf.data.Dataset`, generator or other iterable of
            batches of them; a few hundred samples), needed by and only by
            `score="wanda"`. Dense, Conv and DepthwiseConv kernels,
            including those inside composite layers (KerasHub's transformer
            blocks). Arrays are read in batches of 128; a batch that is an
            `(inputs, targets)` tuple (or `(inputs, targets,
            sample_weights)`) gives its inputs alone, as in `model.fit`. A
            dataset or generator is read to its end, or `calibration_steps`
            batches, and at most up to the batch that reaches
            `keras_regkit.pruning.calibration.CALIBRATION_SAMPLES` (1024)
            samples when `calibration_steps` is not given (so a dataset that
            repeats forever ends there). NaN or inf entries are refused.
        ranking: `"global"` (one threshold over all selected weights:
            layers with many unimportant weights give up more) or
            `"per_output"` (every output unit loses the same share, as the
            Wanda paper compares, for models whose layers are alike).
            Entries only. Defaults to `"global"`, which did better for both
            scores on the MNIST-1D CNN (benchmarks/bench_patterns.py).
        calibration_steps: How many batches of `calibration_data` to
            read, an int >= 1 (as `model.predict(steps=)`), with
            `score="wanda"` only. Defaults to None: to the end of the data,
            or the sample cap above.
        method: `"cut"` (zero what `score` ranks lowest; the kept weights
            stay as they are) or `"sparsegpt"`: layer by layer, cut and
            update the kept weights to reproduce each layer's outputs on
            `calibration_data` (`keras_regkit.pruning.prune_reconstructed`,
            with its defaults; it takes `sparsity`, `granularity` `"weight"`
            or `"N:M"`, `layers`, `hold` and `calibration_steps`). Defaults
            to `"cut"`.
        allocation: How `sparsity` is shared out across the selected
            weights (entries only, `granularity="weight"`): `"global"` (one
            ranking over all of them, as `ranking` says; with
            `method="sparsegpt"`, each layer the share one global magnitude
            threshold takes), `"uniform"` (every weight loses `sparsity`),
            `"owl"` or a `keras_regkit.pruning.OWL` (layers with more
            outliers of `|w| · ||x||₂` on `calibration_data` lose less,
            within `spread` of `sparsity`; Yin et al., 2023), or a dict of
            weight names (a kernel's is its layer's path, as
            `sparsity_report` names it) to sparsities in [0, 1], one for
            every selected weight, `sparsity` left None. With a per-layer
            allocation each weight is ranked within itself (within each of
            its output units with `ranking="per_output"`), and the zeros
            add up to `sparsity` of the entries. `"sensitivity"` or
            a `keras_regkit.pruning.Sensitivity`: layers whose pruning
            alone moves the model's outputs on `calibration_data` most lose
            less, within `spread`. `"owl"` and `"sensitivity"` read
            `calibration_data` whatever the `score`. Defaults to
            `"global"`.

    Returns:
        A `PruneResult` with the threshold used and the zeros made.

    Raises:
        TypeError, ValueError: If not exactly one of `threshold` and
            `sparsity` is given, or either is out of range, `hold` is not
            True or False, the model is not built yet, the selector matches
            nothing, a selected weight holds NaN or inf entries, or
            `granularity` is unknown or cannot apply (weight kinds without
            units, a subclassed model whose output layers are unknown), or
            `calibration_data` holds NaN or inf entries or cannot be passed
            to the model, or `allocation` is unknown, names weights that
            are not the selection, or is asked of a `threshold`, of units or
            of a pattern. Nothing is changed then.

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
    allocation = allocation_lib.get(allocation)
    if isinstance(allocation, dict) and (sparsity is not None or threshold is not None):
        raise ValueError(
            "`allocation` given as a dict sets every weight's sparsity: leave `sparsity` and `threshold` None. "
            f"Received: sparsity={sparsity!r}, threshold={threshold!r}")
    if method == "sparsegpt":
        # Imported here: the reconstruction's result is a PruneResult.
        from keras_regkit.pruning import reconstruction

        unused = {name: value for name, value, default in (
            ("threshold", threshold, None), ("weights", weights, "kernel"), ("score", score, "magnitude"),
            ("ranking", ranking, "global")) if value != default}
        if unused:
            raise ValueError(
                "method='sparsegpt' cuts a `sparsity` of the kernels' entries and chooses them itself: "
                f"leave {sorted(unused)} at their defaults. Received: {unused}")
        if allocation != "global":
            _check_per_layer(allocation, granularity_lib.get(granularity), threshold)
        if allocation in ("global", "uniform"):
            return reconstruction.prune_reconstructed(model, sparsity, calibration_data, granularity, layers, hold,
                                                      calibration_steps, allocation=allocation)
        if calibration_data is None:
            raise ValueError(
                "method='sparsegpt' reconstructs each layer from the inputs it receives: it needs "
                "`calibration_data`. Received: calibration_data=None")
        if not isinstance(allocation, dict):
            if sparsity is None:
                raise ValueError("method='sparsegpt' needs `sparsity`, the fraction of the entries to cut.")
            sparsity = _validate.real("sparsity", sparsity, maximum=1.0)
        refs = granularity_lib.Weights().select(model, layers)
        cut_lib.check_finite(refs)
        shares = _layer_sparsities(model, refs, allocation, sparsity, calibration_data, calibration_steps,
                                   method="sparsegpt")
        return reconstruction.prune_reconstructed(model, shares, calibration_data, granularity, layers, hold,
                                                  calibration_steps)
    if method != "cut":
        raise ValueError(
            f"Invalid value for argument `method`: expected 'cut' or 'sparsegpt'. Received: method={method!r}")
    # Every argument is checked before any weight changes.
    granularity = granularity_lib.get(granularity, weights)
    if allocation != "global":
        _check_per_layer(allocation, granularity, threshold)
    full_pattern = granularity.ceiling if isinstance(granularity, granularity_lib.NM) else None
    if full_pattern is not None and threshold is None and sparsity is None:
        sparsity = full_pattern
    if (threshold is None) == (sparsity is None) and not isinstance(allocation, dict):
        raise ValueError(
            "Give exactly one of `threshold` or `sparsity`. Received: "
            f"threshold={threshold!r}, sparsity={sparsity!r}"
        )
    if threshold is not None:
        threshold = _validate.real("threshold", threshold)
    elif sparsity is not None:
        sparsity = _validate.real("sparsity", sparsity, maximum=1.0 if full_pattern is None else full_pattern)
    hold = _validate.boolean("hold", hold)
    if score not in ("magnitude", "wanda"):
        raise ValueError(
            f"Invalid value for argument `score`: expected 'magnitude' or 'wanda'. Received: score={score!r}")
    reads_inputs = score == "wanda" or isinstance(allocation, allocation_lib.MEASURED)
    if reads_inputs != (calibration_data is not None):
        raise ValueError(
            "score='wanda' (or allocation='owl' or 'sensitivity') needs `calibration_data` (a few hundred "
            f"unlabeled inputs), and only it reads them. Received: score={score!r}, allocation={allocation!r}, "
            "calibration_data="
            f"{'None' if calibration_data is None else type(calibration_data).__name__}")
    if calibration_steps is not None:
        calibration_steps = _validate.integer("calibration_steps", calibration_steps, minimum=1)
        if not reads_inputs:
            raise ValueError(
                "`calibration_steps` says how many batches of `calibration_data` score='wanda' (or "
                f"allocation='owl') reads. Received: calibration_steps={calibration_steps}, score={score!r}")
    if ranking not in ("global", "per_output"):
        raise ValueError(
            f"Invalid value for argument `ranking`: expected 'global' or 'per_output'. Received: ranking={ranking!r}")
    if score == "wanda" and isinstance(granularity, granularity_lib.Units):
        raise ValueError(
            f"score='wanda' scores entries by the input each reads; granularity={str(granularity)!r} removes whole "
            "units. Use granularity='weight' or 'N:M' with it, or score='magnitude'.")
    if ranking == "per_output" and not isinstance(granularity, granularity_lib.Weights):
        raise ValueError(
            "ranking='per_output' shares a sparsity out over each unit's entries: it needs "
            f"granularity='weight' (an N:M pattern is per group already). Received: granularity={str(granularity)!r}")
    refs = granularity.select(model, layers)
    cut_lib.check_finite(refs)
    norms = calibration.input_norms(model, refs, calibration_data, steps=calibration_steps) if reads_inputs else None
    scores = (scores_lib.Wanda(norms) if score == "wanda" else scores_lib.Magnitude()).scores(refs)
    per_output = ranking == "per_output"
    if allocation == "global":
        made = cut_lib.cut(refs, scores, granularity, sparsity=sparsity, threshold=threshold, per_output=per_output)
        highest = made.threshold
    else:
        shares = _layer_sparsities(model, refs, allocation, sparsity, calibration_data, calibration_steps, norms,
                                   score)
        cuts = [cut_lib.cut([ref], [values], granularity, sparsity=shares[ref.name], per_output=per_output)
                for ref, values in zip(refs, scores)]
        highest = max((made.threshold for made in cuts if made.threshold is not None), default=None)
    if hold:
        hold_zeros(model, [ref.variable for ref in refs])
    zeros, params = select.count_zeros([ref.variable for ref in refs])
    used = threshold if threshold is not None else (highest or 0.0)
    return PruneResult(float(used), zeros, params, refs)


def _check_per_layer(allocation, granularity, threshold) -> None:
    """Refuses a per-layer `allocation` where there is no `sparsity` of
    entries to share out."""
    if threshold is not None:
        raise ValueError(
            f"allocation={allocation!r} shares out a `sparsity`; a `threshold` cuts the same score everywhere. "
            f"Give `sparsity` instead. Received: threshold={threshold!r}")
    if not isinstance(granularity, granularity_lib.Weights):
        raise ValueError(
            f"allocation={allocation!r} shares entries out across layers: it needs granularity='weight' (units "
            f"are ranked across layers already, a pattern is the same everywhere). Received: "
            f"granularity={str(granularity)!r}")


def _layer_sparsities(model, refs, allocation, sparsity, calibration_data, calibration_steps, norms=None,
                      score="magnitude", method="cut") -> dict:
    """Each selected weight's sparsity (by `ref.name`) under a per-layer
    `allocation`: `"uniform"`, a checked dict, or an `OWL`'s from the Wanda
    scores (the input `norms`, read from `calibration_data` if not given)."""
    if allocation == "uniform":
        return {ref.name: sparsity for ref in refs}
    if isinstance(allocation, dict):
        allocation_lib.check_names(allocation, [ref.name for ref in refs])
        return dict(allocation)
    if isinstance(allocation, allocation_lib.Sensitivity):
        def prune_alone(ref):
            # The call's own score or method, on this layer alone.
            prune(model, sparsity=sparsity, layers=lambda layer: layer is ref.layer, score=score, method=method,
                  calibration_data=calibration_data if score == "wanda" or method == "sparsegpt" else None,
                  calibration_steps=calibration_steps if score == "wanda" or method == "sparsegpt" else None)

        errors = layer_sensitivity.output_errors(model, refs, calibration_data, prune_alone, calibration_steps)
        magnitudes = {ref.name: np.abs(ops.convert_to_numpy(ref.variable.value)) for ref in refs}
        return allocation.sparsities(errors, magnitudes, sparsity)
    if norms is None:
        norms = calibration.input_norms(model, refs, calibration_data, steps=calibration_steps)
    wanda = scores_lib.Wanda(norms).scores(refs)
    return allocation.sparsities({ref.name: values for ref, values in zip(refs, wanda)}, sparsity)
