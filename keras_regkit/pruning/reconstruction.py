"""One-shot pruning that updates the weights it keeps: `prune_reconstructed`
(SparseGPT; Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot", ICML 2023).

Layers are pruned one at a time, in the order the model calls them, each
calibrated on the inputs it receives from the layers already pruned before
it (sequential calibration: the later layers correct the earlier ones'
errors instead of compounding them). A layer's inputs are read by running
the model eagerly on the calibration batches with that layer's `call`
briefly wrapped, which sees the layers inside composite layers too (the
projections inside KerasHub's attention and feed-forward blocks); the pass
stops as soon as the layer has read its inputs. Each layer thus costs one
forward pass over the calibration data up to it: about L/2 full forward
passes for L layers.

Memory: one layer's Gram matrix (`inputs²` floats) and one batch of its
inputs at a time, never the model's activations; plus a host copy of the
pruned kernels, which puts the model back as it was if any layer fails.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import calibration
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import linear_layers
from keras_regkit.pruning import sparsegpt
from keras_regkit.pruning.hold import hold_zeros
from keras_regkit.pruning.one_shot import PruneResult

COVERED = "Dense, EinsumDense and Conv1D/Conv2D/Conv3D kernels"
ALLOCATIONS = ("global", "uniform")


@dataclasses.dataclass(frozen=True)
class ReconstructionResult(PruneResult):
    """What `prune_reconstructed` did: a `PruneResult` (its `threshold` is
    0.0: entries are chosen per block of columns, not by one threshold)
    with, per pruned weight (by name), `errors`: the relative error of its
    layer's outputs on the calibration inputs, `||(W - Ŵ) X||² / ||W X||²`."""

    errors: dict = dataclasses.field(default_factory=dict)


class Gram:
    """`X Xᵀ`, summed in float64 over the rows `add` is given: one layer's
    input Gram matrix (its Hessian), the only one alive at a time."""

    def __init__(self, size: int):
        self.matrix = np.zeros((size, size))
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        rows = rows.astype("float64", copy=False)
        self.matrix += rows.T @ rows
        self.rows += len(rows)


class _Reached(Exception):
    """Ends a forward pass once the layer being calibrated has read its
    inputs: the rest of the model is not needed."""


def _numpy(value) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(value) if ops.is_tensor(value) else value)


def _samples_in(batch) -> int:
    shape = np.shape(keras.tree.flatten(batch)[0])
    return int(shape[0]) if shape else 1


def _run(model, batch) -> None:
    """`model(batch)`, up to `_Reached`; any other failure is the data's."""
    try:
        model(batch, training=False)
    except _Reached:
        pass
    except Exception as error:
        raise ValueError(
            "Invalid value for argument `calibration_data`: the model cannot be called on it "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass inputs as "
            "`model(x)` takes them (arrays, a dict or list of arrays, or a dataset of them).") from None


def _batch_source(calibration_data, batch_size: int, steps):
    """A function returning an iterable of the calibration batches, read
    again for every layer: arrays are sliced each time; a dataset or
    generator is read once and its batches (inputs only) kept on the host."""
    if isinstance(calibration_data, (np.ndarray, list, tuple, dict)) or ops.is_tensor(calibration_data):
        return lambda: calibration.batches(calibration_data, batch_size, steps)
    kept = [keras.tree.map_structure(_numpy, batch) for batch in calibration.batches(calibration_data, batch_size, steps)]
    return lambda: kept


@dataclasses.dataclass
class _Survey:
    """What one pass tells of each covered layer: its place in the call
    order, how often one forward pass calls it, its rows per sample."""

    order: list = dataclasses.field(default_factory=list)
    calls: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)
    samples: int = 0


def _survey(model, covered: dict, batches) -> _Survey:
    """Runs the model on the first batch with every covered layer's inputs
    read, and counts the samples of every batch (refusing non-finite ones)."""
    survey = _Survey()

    def read(layer, inputs):
        key = id(layer)
        if key not in survey.calls:
            survey.order.append(key)
        survey.calls[key] = survey.calls.get(key, 0) + 1
        survey.rows[key] = survey.rows.get(key, 0) + len(covered[key].rows(_numpy(inputs)))

    for step, batch in enumerate(batches()):
        calibration.check_finite_batch(batch, step, survey.samples)
        if step == 0:
            with calibration.reading_inputs([linear.layer for linear in covered.values()], read):
                _run(model, batch)
            first = _samples_in(batch)
            survey.rows = {key: rows / first for key, rows in survey.rows.items()}
        survey.samples += _samples_in(batch)
    if not survey.samples:
        raise ValueError("Invalid value for argument `calibration_data`: it holds no samples.")
    return survey


def _check_enough_samples(survey: _Survey, covered: dict, names: dict, steps) -> None:
    for key in survey.order:
        linear, per_sample = covered[key], survey.rows[key]
        if survey.samples * per_sample < linear.inputs:
            needed = math.ceil(linear.inputs / per_sample)
            cap = "" if steps is not None else (
                f" (a dataset or generator is read up to {calibration.CALIBRATION_SAMPLES} samples unless "
                "`calibration_steps` is given)")
            raise ValueError(
                f"Invalid value for argument `calibration_data`: its {survey.samples} samples give "
                f"{names[key]!r} {survey.samples * per_sample:g} input rows ({per_sample:g} per sample), fewer "
                f"than the {linear.inputs} inputs its kernel reads: their Gram matrix would be singular, and the "
                f"reconstruction would fit these samples rather than the layer. Pass at least {needed} samples"
                f"{cap}. Nothing was changed.")


def _gram(model, linear, calls: int, batches) -> Gram:
    """The Gram matrix of `linear`'s inputs over every calibration batch,
    as the model computes them now (with the layers before it pruned)."""
    gram = Gram(linear.inputs + linear.free)
    seen = [0]

    def read(layer, inputs):
        gram.add(linear.rows(_numpy(inputs)))
        seen[0] += 1
        if seen[0] == calls:
            raise _Reached

    with calibration.reading_inputs([linear.layer], read):
        for batch in batches():
            seen[0] = 0
            _run(model, batch)
    return gram


def _covered(refs, pattern, update_bias: bool) -> tuple[dict, dict]:
    """The covered layers' `LinearLayer`s and names by `id(layer)`; warns
    of the others, which are left as they are."""
    covered, names, skipped = {}, {}, {}
    for ref in refs:
        linear = linear_layers.linear_layer(ref.layer, ref.variable, update_bias)
        if isinstance(linear, str):
            skipped[ref.name] = linear
            continue
        if pattern is not None and linear.group_axis % pattern[1]:
            raise ValueError(
                f"granularity='{pattern[0]}:{pattern[1]}' needs the input axis of every kernel to split into "
                f"groups of {pattern[1]}: {ref.name!r} has {linear.group_axis} inputs on it (kernel shape "
                f"{tuple(ref.variable.shape)}). Leave it out with `layers=`, or choose an M that divides it.")
        covered[id(ref.layer)], names[id(ref.layer)] = linear, ref.name
    if skipped:
        warnings.warn(
            f"method='sparsegpt' covers {COVERED}; left untouched: "
            + ", ".join(f"{name!r} ({why})" for name, why in skipped.items()) + ".", stacklevel=3)
    if not covered:
        raise ValueError(
            f"method='sparsegpt' covers {COVERED}, and the selection has none: {sorted(skipped)}. Select "
            "other layers (`layers=`).")
    return covered, names


def _shares(kernels: dict, sparsity, allocation: str) -> dict:
    """Each layer's sparsity: `sparsity` for every one (`"uniform"`), or
    the share of its entries one global magnitude threshold over all of them
    takes (`"global"`, as `prune` ranks), ties broken by position."""
    if sparsity is None:
        return {}
    if allocation == "uniform":
        return {key: sparsity for key in kernels}
    magnitudes = np.concatenate([np.abs(kernel).reshape(-1) for kernel in kernels.values()])
    count = int(round(sparsity * magnitudes.size))
    cut = np.zeros(magnitudes.size, dtype=bool)
    if count:
        cut[np.argsort(magnitudes, kind="stable")[:count]] = True
    pieces = np.split(cut, np.cumsum([kernel.size for kernel in kernels.values()])[:-1])
    return {key: float(piece.mean()) for key, piece in zip(kernels, pieces)}


def _check_arguments(sparsity, granularity, calibration_data, hold, batch_size, calibration_steps, block_size,
                     dampening):
    """The arguments, checked and normalized: `(sparsity, pattern)`."""
    if calibration_data is None:
        raise ValueError(
            "method='sparsegpt' reconstructs each layer from the inputs it receives: it needs `calibration_data` "
            "(a few hundred unlabeled inputs as `model(x)` takes them). Received: calibration_data=None")
    granularity = granularity_lib.get(granularity)
    if isinstance(granularity, granularity_lib.NM):
        if sparsity is not None and not math.isclose(_validate.real("sparsity", sparsity), granularity.ceiling):
            raise ValueError(
                f"method='sparsegpt' with granularity={granularity.name!r} cuts the whole pattern: give "
                f"sparsity=None (or {granularity.ceiling:g}). Received: sparsity={sparsity!r}")
        sparsity, pattern = granularity.ceiling, (granularity.n, granularity.m)
    elif isinstance(granularity, granularity_lib.Weights):
        if sparsity is None:
            raise ValueError("method='sparsegpt' needs `sparsity`, the fraction of each layer's entries to cut.")
        sparsity, pattern = _validate.real("sparsity", sparsity, maximum=1.0), None
    else:
        raise ValueError(
            "method='sparsegpt' cuts entries: expected granularity='weight' or 'N:M' (e.g. '2:4'). "
            f"Received: granularity={str(granularity)!r}")
    _validate.boolean("hold", hold)
    _validate.integer("batch_size", batch_size, minimum=1)
    if calibration_steps is not None:
        _validate.integer("calibration_steps", calibration_steps, minimum=1)
    _validate.integer("block_size", block_size, minimum=1)
    _validate.real("dampening", dampening)
    return sparsity, pattern


def prune_reconstructed(
    model: keras.Model,
    sparsity: float | None = None,
    calibration_data=None,
    granularity: str = "weight",
    layers: weights_lib.LayerSelector = "*",
    hold: bool = False,
    calibration_steps: int | None = None,
    batch_size: int = 128,
    block_size: int = sparsegpt.BLOCK_SIZE,
    dampening: float = sparsegpt.DAMPENING,
    allocation: str = "global",
    update_bias: bool = True,
) -> ReconstructionResult:
    """Prunes each layer at once and updates the weights it keeps so that
    the layer's outputs on `calibration_data` change as little as possible
    (SparseGPT; Frantar & Alistarh, 2023).

    Layers are taken in the order the model calls them, each calibrated on
    the inputs the already-pruned layers before it give it. For a layer with
    kernel `W` (units x inputs) and inputs `X` (inputs x rows: samples and
    positions), `H = X Xᵀ` (plus `dampening` x its mean diagonal) is
    accumulated batch by batch; the entries with the lowest `w² /
    [H⁻¹]_cc` are cut, block of `block_size` inputs after block, each cut
    compensated by the Optimal Brain Surgeon update of the row's remaining
    weights, and (with `update_bias`, an addition to the paper) of its
    bias, the weight of a constant input. Dense, EinsumDense (the
    projections inside Keras' and KerasHub's attention) and
    Conv1D/Conv2D/Conv3D kernels are covered (a convolution as im2col);
    other selected weights are named in a warning and left untouched.

    Args:
        model: The model to change, in place.
        sparsity: The fraction of the covered kernels' entries to zero, in
            [0, 1], shared out as `allocation` says. With an `"N:M"`
            granularity, None (the pattern's).
        calibration_data: Unlabeled inputs as `model(x)` takes them (arrays,
            a dict or list of arrays), or a `tf.data.Dataset`, `PyDataset`
            or generator of batches of them (`(inputs, targets)` batches
            give their inputs); a dataset is read once and its inputs kept
            on the host, up to
            `keras_regkit.pruning.calibration.CALIBRATION_SAMPLES` samples
            unless `calibration_steps` says otherwise. Every layer must
            receive at least as many rows (samples x positions) as its
            kernel has inputs.
        granularity: `"weight"` (unstructured) or `"N:M"` (e.g. `"2:4"`:
            at most N non-zeros in every M consecutive inputs of a unit,
            along the kernel's last input axis).
        layers: Layer selector, as in `prune`. Defaults to all.
        hold: If True, keep the zeros at zero during further training.
        calibration_steps: How many batches of `calibration_data` to read.
        batch_size: Samples per batch when `calibration_data` is arrays.
        block_size: Inputs per block of the mask selection (rounded down to
            a multiple of M, at least M, with a pattern).
        dampening: Added to `H`'s diagonal, as a fraction of its mean.
        allocation: `"global"`: each layer loses the share of its entries
            that one magnitude threshold over all covered kernels takes (as
            `prune` ranks), so small layers that matter keep more; or
            `"uniform"`: every layer loses `sparsity` (the paper's). Ignored
            with a pattern. Defaults to `"global"`, 1 to 40 points ahead on
            the benchmarks (benchmarks/bench_one_shot.py).
        update_bias: Whether a layer's bias (one per unit) is updated with
            the kept weights. Defaults to True; False is the paper's
            algorithm exactly.

    Returns:
        A `ReconstructionResult`.

    Raises:
        TypeError, ValueError: If an argument is invalid; the model cannot
            be called on `calibration_data`, or it holds no samples, NaN or
            inf entries, or fewer samples than a layer needs (the message
            says how many); a covered kernel's inputs do not split into the
            pattern's groups, or hold NaN or inf; or no selected layer is
            covered. The model is unchanged then.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> result = rk.pruning.prune_reconstructed(model, sparsity=0.5, calibration_data=x)
    >>> result.sparsity
    0.5
    """
    sparsity, pattern = _check_arguments(sparsity, granularity, calibration_data, hold, batch_size,
                                         calibration_steps, block_size, dampening)
    _validate.boolean("update_bias", update_bias)
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"Invalid value for argument `allocation`: expected one of {list(ALLOCATIONS)}. "
            f"Received: allocation={allocation!r}")
    if pattern is not None:
        block_size = max(pattern[1], block_size // pattern[1] * pattern[1])
    refs = weights_lib.select_weights(model, layers, "kernel")
    cut_lib.check_finite(refs)
    covered, names = _covered(refs, pattern, update_bias)
    batches = _batch_source(calibration_data, batch_size, calibration_steps)
    survey = _survey(model, covered, batches)
    never = sorted(names[key] for key in covered if key not in survey.calls)
    if never:
        raise ValueError(f"method='sparsegpt': {never} were never called on the calibration data.")
    _check_enough_samples(survey, covered, names, calibration_steps)
    kernels = {key: _numpy(covered[key].variable.value).copy() for key in survey.order}
    shares = _shares(kernels, sparsity if pattern is None else None, allocation)
    biases = {key: _numpy(covered[key].bias.value).copy() for key in survey.order if covered[key].bias is not None}
    errors = {}
    try:
        for key in survey.order:
            linear = covered[key]
            gram = _gram(model, linear, survey.calls[key], batches)
            if not np.isfinite(gram.matrix).all():
                raise ValueError(
                    f"method='sparsegpt': the inputs of {names[key]!r} reach NaN or inf on the calibration data "
                    "(finite as given: the layers before it overflow on it). Nothing was changed.")
            done = sparsegpt.reconstruct(linear.matrix().T, gram.matrix, shares.get(key), pattern, block_size,
                                         dampening, linear.free)
            # One layer's Gram matrix alive at a time: the frames of the
            # passes `_Reached` ended hold it in reference cycles (Keras
            # re-raises with a filtered traceback it keeps in a local).
            del gram
            gc.collect()
            linear.assign(done.matrix.T)
            errors[names[key]] = done.error
    except BaseException:
        for key, value in kernels.items():
            covered[key].variable.assign(value)
        for key, value in biases.items():
            covered[key].bias.assign(value)
        raise
    pruned = [ref for ref in refs if id(ref.layer) in covered]
    if hold:
        hold_zeros(model, [ref.variable for ref in pruned])
    zeros = sum(int(np.count_nonzero(_numpy(ref.variable.value) == 0)) for ref in pruned)
    params = sum(int(np.prod(ref.variable.shape)) for ref in pruned)
    return ReconstructionResult(0.0, zeros, params, pruned, errors)
