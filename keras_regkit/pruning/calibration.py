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

import keras
import numpy as np
from keras import ops

from keras_regkit.pruning import units as units_lib
from keras_regkit.weights import WeightRef


@contextlib.contextmanager
def _recording_inputs(layers, sums):
    """While open, each of `layers` adds the squares of its inputs, summed
    over every axis but the channels, to `sums[id(layer)]`."""
    wrapped = []
    for layer in layers:
        original = layer.call

        def call(inputs, *args, _original=original, _key=id(layer), **kwargs):
            squares = ops.sum(ops.square(ops.cast(inputs, "float32")), axis=tuple(range(len(inputs.shape) - 1)))
            sums[_key] = sums.get(_key, 0.0) + np.asarray(ops.convert_to_numpy(squares), dtype="float64")
            return _original(inputs, *args, **kwargs)

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


def _batches(calibration_data, batch_size: int):
    if isinstance(calibration_data, (np.ndarray, list, tuple, dict)) or keras.ops.is_tensor(calibration_data):
        leaves = keras.tree.flatten(calibration_data)
        n = int(leaves[0].shape[0])
        for start in range(0, n, batch_size):
            yield keras.tree.map_structure(lambda a: a[start:start + batch_size], calibration_data)
        return
    for batch in calibration_data:  # a dataset or generator of inputs (or (inputs, targets))
        yield batch[0] if isinstance(batch, tuple) else batch


def input_norms(model: keras.Model, refs: list[WeightRef], calibration_data, batch_size: int = 128) -> dict:
    """`||X_j||₂` per input channel `j` of each weight's layer, over every
    calibration sample (and position), keyed by `id(ref.layer)`."""
    layers = {id(ref.layer): ref.layer for ref in refs}
    for ref in refs:
        if not units_lib.reads_layer_inputs(ref.layer) or units_lib.input_axis(ref.layer, ref.variable) is None:
            raise ValueError(
                f"score='wanda' weighs each kernel entry by the norm of the layer input it reads: "
                f"{ref.name!r} ({type(ref.layer).__name__} {ref.kind}) does not read its layer's inputs "
                "directly. Select Dense, Conv or DepthwiseConv kernels (`layers=`, `weights=`)."
            )
    sums: dict = {}
    with _recording_inputs(layers.values(), sums):
        seen = 0
        for batch in _batches(calibration_data, batch_size):
            try:
                model(batch, training=False)
            except Exception as error:
                raise ValueError(
                    "Invalid value for argument `calibration_data`: the model cannot be called on it "
                    f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass "
                    "inputs as `model(x)` takes them (arrays, a dict or list of arrays, or a dataset of them)."
                ) from None
            seen += 1
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
        norms[id(ref.layer)] = norm
    return norms
