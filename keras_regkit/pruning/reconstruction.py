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

Each layer's target is the output it had in the unpruned model (`W X_d`,
an addition to the paper, whose target is `W X` on the pruned inputs): the
later layers then correct the earlier ones' errors instead of carrying
them. Every calibration batch is run twice per layer for it, once with the
layers before as pruned and once as they were, so each layer costs two
forward passes over the calibration data up to it.

Memory: one layer's two Gram matrices (`X Xᵀ` and `X X_dᵀ`, `inputs²`
floats each) and two batches of its inputs at a time, never the model's
activations; plus host copies of the pruned kernels as they were (which
put the model back as it was if any layer fails) and as pruned.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import gc
import math
import warnings

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import calibration
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import layer_inputs
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
    layer's outputs on the calibration inputs against those it had in the
    unpruned model, `||W X_d - Ŵ X||² / ||W X_d||²` (`X`: its inputs with
    the layers before it pruned, `X_d`: as they were; with
    `dense_target=False`, `X_d = X`); and `untouched`: the selected
    weights of layers the method does not cover, by name, each with why
    (also named in a warning)."""

    errors: dict = dataclasses.field(default_factory=dict)
    untouched: dict = dataclasses.field(default_factory=dict)


def _covered(refs, pattern, update_bias: bool, per_layer: dict | None) -> tuple[dict, dict, dict]:
    """The `LinearLayer`s and names, by `id(layer)`, of the covered layers
    to prune (with `per_layer`, those it names with a sparsity above 0), and
    why each selected layer not covered is left as it is (warned of)."""
    linears, skipped = {}, {}
    for ref in refs:
        linear = linear_layers.linear_layer(ref.layer, ref.variable, update_bias)
        if isinstance(linear, str):
            skipped[ref.name] = linear
        else:
            linears[ref.name] = (ref, linear)
    if per_layer is not None:
        unknown = sorted(name for name in per_layer if name not in linears)
        if unknown:
            not_covered = [f"{name!r} ({skipped[name]})" for name in unknown if name in skipped]
            raise ValueError(
                f"Invalid value for argument `sparsity`: it names {unknown}, which are not covered kernels of the "
                f"selection" + (f" ({', '.join(not_covered)})" if not_covered else "") + f". Valid names: "
                f"{sorted(linears)}.")
        linears = {name: pair for name, pair in linears.items() if per_layer.get(name, 0.0) > 0}
    covered, names = {}, {}
    for name, (ref, linear) in linears.items():
        if pattern is not None and linear.group_axis % pattern[1]:
            raise ValueError(
                f"granularity='{pattern[0]}:{pattern[1]}' needs the input axis of every kernel to split into "
                f"groups of {pattern[1]}: {name!r} has {linear.group_axis} inputs on it (kernel shape "
                f"{tuple(ref.variable.shape)}). Leave it out with `layers=` (or a per-layer `sparsity` of 0), "
                "or choose an M that divides it.")
        covered[id(ref.layer)], names[id(ref.layer)] = linear, name
    if skipped:
        warnings.warn(
            f"method='sparsegpt' covers {COVERED}; left untouched: "
            + ", ".join(f"{name!r} ({why})" for name, why in skipped.items()) + ".", stacklevel=3)
    if not covered and per_layer is None:
        raise ValueError(
            f"method='sparsegpt' covers {COVERED}, and the selection has none: {sorted(skipped)}. Select "
            "other layers (`layers=`).")
    return covered, names, skipped


def _put(linear, kernel, bias) -> None:
    linear.variable.assign(kernel)
    if bias is not None:
        linear.bias.assign(bias)


def _per_layer_sparsity(sparsity, pattern) -> dict:
    """A mapping of layer names to sparsities, checked: every value in [0,
    1), and with a pattern its ceiling or 0 (the layer left as it is)."""
    checked = {}
    for name, value in sparsity.items():
        if not isinstance(name, str):
            raise TypeError(
                "Invalid value for argument `sparsity`: a mapping's keys are layer names (str, as "
                f"`ReconstructionResult.errors` names them). Received the key {name!r} of type {type(name).__name__}")
        value = _validate.real(f"sparsity[{name!r}]", value)
        if pattern is None and value >= 1.0:
            raise ValueError(
                f"Invalid value for argument `sparsity`: each layer's sparsity must be in [0, 1) (a layer cut to "
                f"nothing passes nothing on). Received: sparsity[{name!r}]={value}")
        ceiling = 1.0 - pattern[0] / pattern[1] if pattern is not None else None
        if pattern is not None and value != 0 and not math.isclose(value, ceiling):
            raise ValueError(
                f"Invalid value for argument `sparsity`: with granularity='{pattern[0]}:{pattern[1]}' a layer is "
                f"cut to the whole pattern ({ceiling:g}) or left as it is (0). Received: sparsity[{name!r}]={value}")
        checked[name] = value
    return checked


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
    calibration.check_form(calibration_data)
    granularity = granularity_lib.get(granularity)
    per_layer = isinstance(sparsity, collections.abc.Mapping)
    if isinstance(granularity, granularity_lib.NM):
        pattern = (granularity.n, granularity.m)
        if per_layer:
            return _per_layer_sparsity(sparsity, pattern), pattern
        if sparsity is not None and not math.isclose(_validate.real("sparsity", sparsity), granularity.ceiling):
            raise ValueError(
                f"method='sparsegpt' with granularity={granularity.name!r} cuts the whole pattern: give "
                f"sparsity=None (or {granularity.ceiling:g}). Received: sparsity={sparsity!r}")
        sparsity = granularity.ceiling
    elif isinstance(granularity, granularity_lib.Weights):
        if sparsity is None:
            raise ValueError("method='sparsegpt' needs `sparsity`, the fraction of each layer's entries to cut.")
        pattern = None
        sparsity = _per_layer_sparsity(sparsity, None) if per_layer else _validate.real(
            "sparsity", sparsity, maximum=1.0)
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
    sparsity: float | collections.abc.Mapping | None = None,
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
    dense_target: bool = True,
) -> ReconstructionResult:
    """Prunes each layer at once and updates the weights it keeps so that
    the layer's outputs on `calibration_data` change as little as possible
    (SparseGPT; Frantar & Alistarh, 2023).

    Layers are taken in the order the model calls them, each calibrated on
    the inputs the already-pruned layers before it give it, and (with
    `dense_target`) fitted to the outputs it had in the unpruned model. For a layer with
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
            granularity, None (the pattern's). Or a mapping of layer names
            (as `ReconstructionResult.errors` names them: the kernel's path,
            e.g. `"decoder_0/self_attention/query"`) to each one's sparsity
            in [0, 1) (with a pattern: the pattern's, or 0): only the layers
            it names are pruned, each to its own sparsity; `allocation` is
            then ignored.
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
        hold: If True, keep the zeros at zero during further training
            (give it before `keras_regkit.shrink`, which trains before its
            first cut: the zeros held, its cut takes them first).
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
            the kept weights. Defaults to True; False (with
            `dense_target=False`) is the paper's algorithm exactly.
        dense_target: Whether each layer is fitted to the outputs it had
            in the unpruned model, `W X_d`, on the inputs the pruned layers
            before it give it, `X` (True: the earlier layers' errors are
            corrected; each calibration batch is run twice per layer); or
            to `W X` (False, the paper's). Defaults to True: 0.5 to 8
            points ahead at 50-90 % and 2:4 on the benchmarks
            (benchmarks/bench_one_shot.py).

    Returns:
        A `ReconstructionResult`.

    Raises:
        TypeError, ValueError: If an argument is invalid (a per-layer
            `sparsity` naming a layer that is not a covered kernel of the
            selection, or a value out of range); `calibration_data` is not
            inputs, the model cannot be called on it, or it holds no
            samples, NaN or inf entries, fewer samples than a layer needs
            (an error, not a warning: the message says how many), or gives
            a layer only zeros; a covered kernel's inputs do not split into
            the pattern's groups, or hold NaN or inf; or no selected layer
            is covered. The model is unchanged then. A selected layer of a
            kind not covered is named in a warning and left as it is.

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
    _validate.boolean("dense_target", dense_target)
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"Invalid value for argument `allocation`: expected one of {list(ALLOCATIONS)}. "
            f"Received: allocation={allocation!r}")
    if pattern is not None:
        block_size = max(pattern[1], block_size // pattern[1] * pattern[1])
    refs = weights_lib.select_weights(model, layers, "kernel")
    cut_lib.check_finite(refs)
    per_layer = sparsity if isinstance(sparsity, dict) else None
    covered, names, untouched = _covered(refs, pattern, update_bias, per_layer)
    if not covered:  # a mapping of zeros: nothing to cut
        return ReconstructionResult(0.0, 0, 0, [], {}, untouched)
    batches = layer_inputs.batch_source(calibration_data, batch_size, calibration_steps)
    survey = layer_inputs.survey(model, covered, batches)
    never = sorted(names[key] for key in covered if key not in survey.calls)
    if never:
        raise ValueError(f"method='sparsegpt': {never} were never called on the calibration data.")
    layer_inputs.check_enough_samples(survey, covered, names, calibration_steps)
    kernels = {key: layer_inputs.numpy(covered[key].variable.value).copy() for key in survey.order}
    if per_layer is not None:
        shares = {key: per_layer[names[key]] for key in covered} if pattern is None else {}
    else:
        shares = _shares(kernels, sparsity if pattern is None else None, allocation)
    biases = {key: layer_inputs.numpy(covered[key].bias.value).copy() for key in survey.order if covered[key].bias is not None}
    errors, pruned_values = {}, {}

    @contextlib.contextmanager
    def unpruned():
        """The layers pruned so far as they were, while open."""
        for key in pruned_values:
            _put(covered[key], kernels[key], biases.get(key))
        try:
            yield
        finally:
            for key, (kernel, bias) in pruned_values.items():
                _put(covered[key], kernel, bias)

    try:
        for key in survey.order:
            linear = covered[key]
            gram = layer_inputs.gram(model, linear, survey.calls[key], batches,
                                     unpruned if dense_target and pruned_values else None)
            if not np.isfinite(gram.matrix).all():
                raise ValueError(
                    f"method='sparsegpt': the inputs of {names[key]!r} reach NaN or inf on the calibration data "
                    "(finite as given: the layers before it overflow on it). Nothing was changed.")
            if not np.diag(gram.matrix)[:linear.inputs].any():
                raise ValueError(
                    f"Invalid value for argument `calibration_data`: {names[key]!r} reads only zeros on it (each of "
                    f"its {linear.inputs} inputs is 0 on every sample" + (", the layers before it pruned" if
                                                                         pruned_values else "") +
                    "): the reconstruction would cut all of its weights. Pass inputs that reach the layer. Nothing "
                    "was changed.")
            done = sparsegpt.reconstruct(linear.matrix().T, gram.matrix, shares.get(key), pattern, block_size,
                                         dampening, linear.free, gram.cross, gram.dense_energy)
            # One layer's Gram matrix alive at a time: the frames of the
            # passes `_Reached` ended hold it in reference cycles (Keras
            # re-raises with a filtered traceback it keeps in a local).
            del gram
            gc.collect()
            linear.assign(done.matrix.T)
            if dense_target:
                pruned_values[key] = (layer_inputs.numpy(linear.variable.value).copy(),
                                      None if linear.bias is None else layer_inputs.numpy(linear.bias.value).copy())
            errors[names[key]] = done.error
    except BaseException:
        for key, value in kernels.items():
            _put(covered[key], value, biases.get(key))
        raise
    pruned = [ref for ref in refs if id(ref.layer) in covered]
    if hold:
        hold_zeros(model, [ref.variable for ref in pruned])
    zeros = sum(int(np.count_nonzero(layer_inputs.numpy(ref.variable.value) == 0)) for ref in pruned)
    params = sum(int(np.prod(ref.variable.shape)) for ref in pruned)
    return ReconstructionResult(0.0, zeros, params, pruned, errors, untouched)
