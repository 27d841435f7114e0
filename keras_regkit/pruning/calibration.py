"""What a few unlabeled inputs say about a model's weights: each covered
layer's input activation norms, for the Wanda score.

The inputs each layer receives are read by running the model eagerly on the
calibration batches with the layers' `call` briefly wrapped, which sees the
layers inside composite layers too (a KerasHub `TransformerEncoder`'s
feed-forward Dense layers are called from its own `call`, not from the
model's graph).
"""

from __future__ import annotations

import contextlib
import itertools

import keras
import numpy as np
from keras import ops

from keras_regkit.pruning import units as units_lib
from keras_regkit.weights import WeightRef


@contextlib.contextmanager
def wrapping_calls(layers, wrap):
    """While open, each of `layers` computes `wrap(layer, call, inputs,
    *args, **kwargs)` instead of its own `call(inputs, *args, **kwargs)`:
    the one place that intercepts layers' calls (the calibration's reads,
    `keras_regkit.quantization`'s simulated int8)."""
    wrapped = []
    for layer in layers:
        def call(inputs, *args, _original=layer.call, _layer=layer, **kwargs):
            return wrap(_layer, _original, inputs, *args, **kwargs)

        # An instance attribute shadows the class's method; one the layer
        # already had is put back as it was.
        wrapped.append((layer, vars(layer).get("call")))
        layer.call = call
    try:
        yield
    finally:
        for layer, own_call in wrapped:
            if own_call is None:
                del layer.call
            else:
                layer.call = own_call


def reading_inputs(layers, read):
    """While open, each of `layers` gives its inputs to `read(layer,
    inputs)` before computing (`read` may raise to end the pass)."""
    def read_then_call(layer, call, inputs, *args, **kwargs):
        read(layer, inputs)
        return call(inputs, *args, **kwargs)

    return wrapping_calls(layers, read_then_call)


def _recording_inputs(layers, sums):
    """While open, each of `layers` adds the squares of its inputs, summed
    over every axis but the channels, to `sums[id(layer)]`."""
    def add_squares(layer, inputs):
        squares = ops.sum(ops.square(ops.cast(inputs, "float32")), axis=tuple(range(len(inputs.shape) - 1)))
        sums[id(layer)] = sums.get(id(layer), 0.0) + np.asarray(ops.convert_to_numpy(squares), dtype="float64")

    return reading_inputs(layers, add_squares)


# Read from a dataset or generator when no `calibration_steps` is given: a
# dataset that repeats forever then ends here. Input norms settle within a
# few hundred samples (the Wanda paper calibrates on 128 sequences).
CALIBRATION_SAMPLES = 1024


def _samples_in(batch) -> int:
    shape = tuple(keras.tree.flatten(batch)[0].shape)
    return int(shape[0]) if shape else 1


def batches(calibration_data, batch_size: int = 128, steps: int | None = None):
    """The model inputs of each calibration batch: arrays (or a dict or list
    of them) in slices of `batch_size`; a dataset's or generator's batches
    as they come, `inputs` alone of an `(inputs, targets)` or `(inputs,
    targets, sample_weights)` tuple, as `model.fit` reads them.

    Stops after `steps` batches if given, else at the end of the data or,
    for a dataset or generator, after the batch that reaches
    `CALIBRATION_SAMPLES` samples."""
    if isinstance(calibration_data, (np.ndarray, list, tuple, dict)) or keras.ops.is_tensor(calibration_data):
        n = _samples_in(calibration_data)
        starts = range(0, n, batch_size)
        for start in starts if steps is None else starts[:steps]:
            yield keras.tree.map_structure(lambda a: a[start:start + batch_size], calibration_data)
        return
    read = 0
    for batch in itertools.islice(calibration_data, steps):  # never pulls a batch past `steps`
        batch = batch[0] if isinstance(batch, tuple) else batch  # a tuple is (inputs, targets, ...)
        yield batch
        read += _samples_in(batch)
        if steps is None and read >= CALIBRATION_SAMPLES:
            return


def check_finite_batch(batch, step: int, first_sample: int) -> None:
    """Refuses a calibration batch with NaN or inf entries: the norms of the
    inputs they reach would be NaN, and a NaN score is never cut."""
    bad, samples = 0, set()
    for leaf in keras.tree.flatten(batch):
        values = np.asarray(keras.ops.convert_to_numpy(leaf)) if keras.ops.is_tensor(leaf) else np.asarray(leaf)
        if not np.issubdtype(values.dtype, np.floating):
            continue  # token ids and other integer inputs are finite
        nonfinite = ~np.isfinite(values)
        bad += int(nonfinite.sum())
        if values.ndim:
            samples.update(np.flatnonzero(nonfinite.reshape(values.shape[0], -1).any(axis=1)).tolist())
    if bad:
        first = first_sample + min(samples) if samples else first_sample
        raise ValueError(
            f"Invalid value for argument `calibration_data`: batch {step} (from sample {first_sample}) holds "
            f"{bad} NaN or inf entries, in {len(samples) or 1} of its samples (the first: sample {first}). "
            "The scores and the reconstruction are built from the inputs each layer reads, and a non-finite "
            "input leaves them without order. "
            "Drop or repair those samples. Nothing was changed.")


def check_form(calibration_data) -> None:
    """Refuses `calibration_data` that is plainly not inputs (see
    `_not_inputs`), before anything is read or changed."""
    if _not_inputs(calibration_data):
        raise TypeError(
            "Invalid value for argument `calibration_data`: expected inputs as `model(x)` takes them (arrays, "
            "a dict or list of arrays) or a dataset or generator of them. Received: calibration_data="
            f"{calibration_data!r:.80} of type {type(calibration_data).__name__}")


def _not_inputs(calibration_data) -> bool:
    """Whether `calibration_data` is plainly not inputs: a str (a path?), a
    number, or arrays given as nested Python lists (whose numbers would be
    read as a multi-input model's inputs)."""
    if isinstance(calibration_data, (str, bytes)) or not hasattr(calibration_data, "__iter__") and not (
            keras.ops.is_tensor(calibration_data)):
        return True
    if isinstance(calibration_data, (list, tuple, dict)):
        return not all(hasattr(leaf, "shape") for leaf in keras.tree.flatten(calibration_data))
    return False


def input_norms(model: keras.Model, refs: list[WeightRef], calibration_data, batch_size: int = 128,
                steps: int | None = None) -> dict:
    """`||X_j||₂` per input channel `j` of each weight's layer, over the
    calibration samples (and positions) `batches` reads, keyed by
    `id(ref.layer)`. Non-finite calibration data is refused."""
    layers = {id(ref.layer): ref.layer for ref in refs}
    for ref in refs:
        if not units_lib.reads_layer_inputs(ref.layer) or units_lib.input_axis(ref.layer, ref.variable) is None:
            raise ValueError(
                f"score='wanda' weighs each kernel entry by the norm of the layer input it reads: "
                f"{ref.name!r} ({type(ref.layer).__name__} {ref.kind}) does not read its layer's inputs "
                "directly. Select Dense, Conv or DepthwiseConv kernels (`layers=`, `weights=`)."
            )
    check_form(calibration_data)
    sums: dict = {}
    with _recording_inputs(layers.values(), sums):
        seen = 0
        for step, batch in enumerate(batches(calibration_data, batch_size, steps)):
            check_finite_batch(batch, step, seen)
            try:
                model(batch, training=False)
            except Exception as error:
                raise ValueError(
                    "Invalid value for argument `calibration_data`: the model cannot be called on it "
                    f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass "
                    "inputs as `model(x)` takes them (arrays, a dict or list of arrays, or a dataset of them)."
                ) from None
            seen += _samples_in(batch)
    if not seen:
        raise ValueError("Invalid value for argument `calibration_data`: it holds no samples.")
    missing = [ref.name for ref in refs if id(ref.layer) not in sums]
    if missing:
        raise ValueError(f"score='wanda': the layers of {missing} were never called on the calibration data.")
    norms = {}
    for ref in refs:
        norm = np.sqrt(sums[id(ref.layer)])
        if norm.shape[0] != ref.variable.shape[units_lib.input_axis(ref.layer, ref.variable)]:
            raise ValueError(
                f"score='wanda': {ref.name!r} reads {norm.shape[0]} input channels but its kernel has "
                f"{ref.variable.shape[-2]} (a layer called on inputs of several widths?)."
            )
        if not np.isfinite(norm).all():
            raise ValueError(
                f"score='wanda': the inputs of {ref.name!r} reach NaN or inf on the calibration data (finite "
                "as given: the layers before it overflow on it, or hold non-finite weights). Nothing was changed.")
        norms[id(ref.layer)] = norm
    return norms
