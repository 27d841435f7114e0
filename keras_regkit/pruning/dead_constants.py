"""Dead units' constants that full int8 would lose: lifted, exactly.

A dead unit (`units.dead_mask`) puts out a constant, and a
BatchNormalization after it makes that constant whatever its `beta` is:
often small, a few hundredths, where the live channels of the same tensor
reach 3-6. `compact` folds such a constant into the next layer, except
where that layer pads (`padding="same"`, `ZeroPadding2D`): there the
constant, zero-padded, becomes a border pattern, which the depthwise
convolution of a MobileNet-style block and its BatchNormalization (whose
variance is that pattern's alone) scale up to the size of a live channel.
In full int8 the constant is stored in its tensor's per-tensor range,
rounded by up to half a step: a constant far below the top of the range
comes out off by a large fraction of itself, and the BatchNormalization
scales that error up with the pattern. Measured on a unit-shrunk
MobileNetV2 (alpha 0.35, digits at 64x64, seed 0; docs/benchmarks.md):
516 such constants, a median 190x (36x to 30 000x) below the top of their
tensors' ranges, took the compacted model's full-int8 top-1 agreement with
its float model from the dense model's 96.7 % to 89.4 %.

`lift_dead_constants` moves each such constant to half the top of its
tensor's range on sample data (BatchNormalization's `beta`) and divides the
depthwise kernel slices that read it by the same factor: the float model
computes the same products (outputs equal to float32 rounding), and the
int8 file rounds the constant by at most 1/255 of itself. `export(...,
int8=True)` converts the model lifted on its `representative_data`
(`lifted`) and puts the weights back: the lift is for the file. Kept in the
model it would not be harmless: the divided slices, up to thousands of
times smaller, would train and rank differently (a later `prune` or shrink
would cut them first).

It lifts only what it can lift exactly: a dead unit of a layer called
once, then a BatchNormalization on the channel axis with a `beta`, then
layers that scale a positive multiple of a channel by that multiple (an
elementwise activation that is the identity at the lifted value: ReLU,
ReLU6 below 6, linear; zero padding; dropout), read only by depthwise
convolutions (whose per-channel int8 weight scales keep the divided slice
as precise as before). Any other path (an `Add`, a swish, a dense or
regular convolution reading the channel, a nested model) is left as it is.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from keras_regkit import _processes
from keras_regkit._keras import graph as graph_fence
from keras_regkit.layers.compaction import ELEMENTWISE, activated, activation_name, to_numpy
from keras_regkit.layers.graph import Graph, made_by
from keras_regkit.pruning import units as units_lib

# Where in its tensor's range (of the largest magnitude on the data) a
# lifted constant goes: half the top, so that it stays inside the range the
# converter calibrates on other data, and is rounded by at most
# (top / 255) / 2 = 1/255 of itself.
LIFT_TO = 0.5
_PADDINGS = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_DROPOUTS = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
             keras.layers.SpatialDropout3D)
_READERS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _is_activation(layer) -> bool:
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)):
        return True
    return isinstance(layer, keras.layers.Activation) and activation_name(layer.activation) in ELEMENTWISE


def _path_to_readers(graph, tensor):
    """From a BatchNormalization's output: the activation layers on the
    way (the only steps that change a constant), and the depthwise
    convolutions reading the end of it; `(None, None, None)` for any other
    path."""
    activations = []
    outputs = {id(t) for t in graph.outputs}
    while True:
        readers = graph.readers(tensor)
        # A model output or a shared reader would see the lifted value.
        if id(tensor) in outputs or not readers or not all(_called_once(call.layer) for call in readers):
            return None, None, None
        if len(readers) == 1 and (_is_activation(readers[0].layer)
                                  or isinstance(readers[0].layer, _PADDINGS + _DROPOUTS)):
            if _is_activation(readers[0].layer):
                activations.append(readers[0].layer)
            tensor = readers[0].outputs[0]
            continue
        layers = [call.layer for call in readers]
        if all(isinstance(layer, _READERS) and layer.data_format == "channels_last" for layer in layers):
            return activations, layers, tensor
        return None, None, None


def _called_once(layer) -> bool:
    """Called once in every graph (a layer shared with a nested model is
    called in the outer graph and in the nested one's)."""
    return len(graph_fence.inbound_nodes(layer)) == 1


def _through(activations, values: np.ndarray) -> np.ndarray:
    """`values` (one per channel) through the activation layers, as the
    model computes them (float32)."""
    for layer in activations:
        values = np.asarray(ops.convert_to_numpy(layer(ops.convert_to_tensor(values[None].astype("float32")))),
                            dtype=np.float64)[0]
    return values


def _candidates(graph):
    """`(unit layer, dead mask, BatchNormalization, activations, readers,
    tensor the readers read)` for every path `lift_dead_constants` may lift."""
    found = []
    for call in graph.calls:
        norm = call.layer
        if (call.is_input or not isinstance(norm, keras.layers.BatchNormalization) or not norm.center
                or not _called_once(norm) or len(call.inputs) != 1
                or norm.axis not in (-1, len(call.inputs[0].shape) - 1)):
            continue
        maker = made_by(call.inputs[0])
        if maker is None or not _called_once(maker.layer) or units_lib.is_head_layer(maker.layer):
            continue
        dead = units_lib.dead_mask(maker.layer)
        if dead is None or not dead.any() or dead.size != call.inputs[0].shape[-1]:
            continue
        activations, readers, tensor = _path_to_readers(graph, call.outputs[0])
        if readers is not None:
            found.append((maker.layer, dead, norm, activations, readers, tensor))
    return found


def _tops(graph, tensors, x, batch_size: int) -> np.ndarray:
    """The largest magnitude of each tensor on `x` (the same on every
    process: the mean of the processes' tops)."""
    probe = keras.Model(graph.model.input, list(tensors))
    count = len(keras.tree.flatten(x)[0])
    tops = np.zeros(len(tensors))
    for start in range(0, count, batch_size):
        outputs = probe(keras.tree.map_structure(lambda a: a[start:start + batch_size], x), training=False)
        for i, output in enumerate(keras.tree.flatten(outputs)):
            tops[i] = max(tops[i], float(ops.convert_to_numpy(ops.max(ops.abs(output)))))
    return _processes.global_sum(tops) / _processes.process_count()


def lift_dead_constants(model: keras.Model, x, batch_size: int = 256) -> int:
    """Moves the small constants of dead units that only depthwise
    convolutions read to `LIFT_TO` of the top of their tensor's range on
    `x`, dividing the depthwise kernel slices by the same factor: the float
    outputs stay equal to float32 rounding, and full int8 rounds each such
    constant by at most 1/255 of itself (see the module docstring).

    Args:
        model: A built model; changed in place (BatchNormalization `beta`s,
            depthwise kernels). A model without a functional graph is left
            as it is.
        x: Sample inputs in the model's input structure (NumPy arrays).
        batch_size: Samples per forward pass.

    Returns:
        The number of constants lifted.
    """
    return _lift(*_found(model), x, batch_size)


def _found(model):
    """The model's graph and its constants that can be lifted (`_candidates`)."""
    graph = Graph.of(model)
    return graph, (_candidates(graph) if graph is not None else [])


def _lift(graph, found: list, x, batch_size: int) -> int:
    """Lifts the constants of `found` (`_candidates(graph)`); the count."""
    if not found:
        return 0
    tops = _tops(graph, [entry[-1] for entry in found], x, batch_size)
    lifted = 0
    for (layer, dead, norm, activations, readers, _), top in zip(found, tops):
        bias = to_numpy(layer.bias) if getattr(layer, "use_bias", False) else np.zeros(dead.size)
        into_norm = activated(layer.activation, bias)[0]
        gamma = to_numpy(norm.gamma) if norm.scale else np.ones(dead.size)
        beta = to_numpy(norm.beta)
        gain = gamma / np.sqrt(to_numpy(norm.moving_variance) + norm.epsilon)
        offset = (into_norm - to_numpy(norm.moving_mean)) * gain  # the normalized input, scaled
        constant = _through(activations, offset + beta)
        target = LIFT_TO * top
        lift = dead & np.isfinite(constant) & (constant != 0) & (np.abs(constant) < target)
        factor = np.where(lift, target / np.where(lift, np.abs(constant), 1.0), 1.0)
        # The activations must give the lifted value back: ReLU6 below 6,
        # ReLU above 0, not a swish.
        lift &= np.isclose(_through(activations, constant * factor), constant * factor, rtol=1e-6, atol=0)
        if not lift.any():
            continue
        factor = np.where(lift, factor, 1.0)
        norm.beta.assign(np.where(lift, constant * factor - offset, beta).astype(norm.beta.dtype))
        for reader in readers:
            kernel = to_numpy(reader.kernel)
            kernel /= factor.reshape(-1, 1)  # (..., channels, multiplier)
            reader.kernel.assign(kernel.astype(reader.kernel.dtype))
        lifted += int(lift.sum())
    return lifted


@contextlib.contextmanager
def lifted(model: keras.Model, x, batch_size: int = 256):
    """`lift_dead_constants(model, x, batch_size)` for the duration of the
    `with` block, which gets the number lifted; every weight it changed is
    put back at the end, whatever happens inside."""
    graph, found = _found(model)
    changed = {id(v): v for entry in found for v in [entry[2].beta] + [r.kernel for r in entry[4]]}
    saved = [(variable, to_numpy(variable).copy()) for variable in changed.values()]
    try:
        yield _lift(graph, found, x, batch_size)
    finally:
        for variable, value in saved:
            variable.assign(value)
