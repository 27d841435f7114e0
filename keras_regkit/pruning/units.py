"""What a unit is, and when it is dead: the one definition.

A unit is an output channel that one slice of a kernel computes alone: an
output unit of `Dense`, a filter of a convolution, an output filter of a
separable convolution (through its pointwise kernel), an output channel of a
depthwise convolution. The slice is every kernel entry at that unit's index
on the kernel's trailing unit axes. A unit is dead when its whole slice is
exactly zero: its output is then the constant `activation(bias)`, which
`compact` folds into the next layer. Pruning, the shrink, `dead_units` and
`compact` all read units from here; which kernel holds a layer's units is
its registered kind's (`keras_regkit.layers.LayerKind.unit_kernel`), so a
layer of your own has units once registered.

A head of a `MultiHeadAttention` (and of the attention inside KerasHub's
`TransformerEncoder`/`TransformerDecoder`, which is one) is a unit too: its
slices of the query, key and value projections (kernels `(in, heads,
head_dim)`, biases `(heads, head_dim)`) and of the output projection (kernel
`(heads, head_dim, out)`). A head is dead when its output-projection slice is
all zero: whatever it attends to is then multiplied by zero, so the layer
computes exactly the same without it, whatever its query, key and value
slices hold (the cut zeroes those too, and `compact` drops them).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_regkit import layers as layers_lib
from keras_regkit import weights as weights_lib
from keras_regkit._keras import graph as graph_fence
from keras_regkit.layers.channels import DepthwiseChannels
from keras_regkit.layers.graph import Graph, made_by
from keras_regkit.pruning import select

# Classes whose layers have units, and whose units are attention heads
# (for messages; the registry decides).
UNIT_LAYERS: tuple[type, ...] = layers_lib.classes_with("unit_kernel")
HEAD_LAYERS: tuple[type, ...] = layers_lib.classes_with("heads")


def is_head_layer(layer) -> bool:
    """Whether `layer`'s units are attention heads."""
    return layers_lib.kind_of(layer).heads is not None


def head_sublayers(layer) -> tuple[tuple, keras.layers.Layer]:
    """The query, key and value projections and the output projection of a
    built attention layer (`EinsumDense` sublayers)."""
    heads = layers_lib.kind_of(layer).heads
    if heads is None or not layer.built:
        raise ValueError(
            f"Attention layer '{layer.name}' ({type(layer).__name__}) is not built, or is not an attention layer "
            "of the layer registry: its heads cannot be read. Build the model first (call it once).")
    return heads(layer)


def head_axis(layer, variable, parent) -> int | None:
    """The axis of `variable` (a weight of `layer`, held by `parent`) that
    indexes the heads of `parent`, or None when it is not a part of
    `parent`'s heads: axis 0 of the output kernel, the heads axis (last but
    one) of the query, key and value kernels and biases."""
    if parent is None or not is_head_layer(parent) or not parent.built:
        return None
    projections, output = head_sublayers(parent)
    if layer is output:
        return 0 if variable is output.kernel else None
    if any(layer is p for p in projections) and (variable is layer.kernel or variable is getattr(layer, "bias", None)):
        return len(variable.shape) - 2
    return None


def head_kernel(layer) -> keras.Variable:
    """The output-projection kernel of an attention layer: its slices decide
    which heads are dead."""
    return head_sublayers(layer)[1].kernel


def unit_kernel(layer) -> keras.Variable | None:
    """The kernel whose trailing axes index `layer`'s units, or None for a
    layer without such units (or not built yet; an attention layer's heads
    are read through `head_kernel`). For `Dense` with LoRA this is the
    effective kernel, as `call` uses."""
    attribute = layers_lib.kind_of(layer).unit_kernel
    return None if attribute is None else getattr(layer, attribute, None)


def unit_axes(layer) -> int:
    """How many trailing axes of `layer`'s unit kernel index its units."""
    kind = layers_lib.kind_of(layer)
    if kind.unit_kernel is None:
        raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) has no units.")
    return kind.unit_axes


def input_axis(layer, variable) -> int | None:
    """The axis of a unit kernel that indexes the channels it reads (the
    last but one: a Dense kernel's rows, a convolution's input channels), or
    None for any other weight (an `EinsumDense` kernel's layout depends on
    its equation)."""
    if not is_unit_kernel(layer, variable):
        return None
    return len(variable.shape) + layers_lib.kind_of(layer).input_axis


def reads_layer_inputs(layer) -> bool:
    """Whether the channels `input_axis` indexes are the layer's own inputs
    (not for a separable convolution: its pointwise kernel reads the
    depthwise convolution's output)."""
    return layers_lib.kind_of(layer).reads_inputs


def is_unit_kernel(layer, variable) -> bool:
    return unit_kernel(layer) is variable


def per_unit(values: np.ndarray, axes: int = 1) -> np.ndarray:
    """`values` (a kernel's shape) as a 2-D array, one column per unit."""
    return values.reshape(int(np.prod(values.shape[:-axes], dtype=np.int64)), -1)


def per_head(values: np.ndarray, axis: int) -> np.ndarray:
    """`values` (a head part's shape) as a 2-D array, one column per head
    (the heads on `axis`)."""
    return per_unit(np.moveaxis(values, axis, -1))


def channel_source(layer) -> keras.layers.Layer | None:
    """The layer whose units a depthwise convolution reads one to one (its
    input channel c is that layer's unit c, through layers that keep
    channels apart: normalization, elementwise activations, dropout, zero
    padding), or None: another kind of layer, calls of it that read
    different layers, or a chain that mixes channels on the way.

    Such a unit and channel are cut as one unit: cut apart, `compact` could
    remove neither (a dead unit's nonzero constant meets the convolution's
    zero padding at the borders; a live unit read by a dead channel still
    has to be computed for nothing). A MobileNet's expansion and depthwise
    layers are such pairs."""
    if not isinstance(layers_lib.kind_of(layer).compact, DepthwiseChannels):
        return None
    # Every call must read the same layer's units (a Sequential built with
    # `add` leaves a call of each layer per rebuild; a layer shared between
    # two producers reads neither alone).
    sources = {id(s): s for s in (_source_through(layer, node) for node in graph_fence.inbound_nodes(layer))}
    return next(iter(sources.values())) if len(sources) == 1 else None


def _source_through(depthwise, node) -> keras.layers.Layer | None:
    """The unit layer that one call of `depthwise` reads one to one, or None."""
    inputs = keras.tree.flatten(node.input_tensors)
    while len(inputs) == 1:
        maker = made_by(inputs[0])
        if maker is None:
            return None
        kernel = unit_kernel(maker.layer)
        if kernel is not None:
            one_axis = unit_axes(maker.layer) == 1 and kernel.shape[-1] == depthwise.kernel.shape[-2]
            return maker.layer if one_axis else None
        compaction = layers_lib.kind_of(maker.layer).compact
        if compaction is None or not compaction.keeps_channels(maker.layer):
            return None
        inputs = maker.inputs
    return None


def dead_mask(layer) -> np.ndarray | None:
    """Which units (or attention heads) of `layer` are dead, or None if it
    has none."""
    if is_head_layer(layer) and layer.built:
        kernel = head_kernel(layer)
        return _all_zero(kernel, tuple(range(1, len(kernel.shape))))
    kernel = unit_kernel(layer)
    if kernel is None:
        return None
    return _all_zero(kernel, tuple(range(len(kernel.shape) - unit_axes(layer)))).reshape(-1)


def _all_zero(kernel, axis: tuple) -> np.ndarray:
    """Whether every entry of `kernel` along `axis` is an exact zero: by
    NumPy where the kernel is in the host's memory (no eager op for JAX to
    compile on its first call), else reduced on the device, so that only
    the booleans come to the host."""
    value = kernel.value if isinstance(kernel, keras.Variable) else kernel
    host = select.host_array(value)
    if host is not None:
        return np.all(host == 0, axis=axis)
    return np.asarray(ops.convert_to_numpy(ops.all(ops.equal(value, 0), axis=axis)), dtype=bool)


def dead_units(model: keras.layers.Layer) -> dict[str, tuple[int, int]]:
    """Counts the dead units of every Dense and Conv layer, without changing
    or building anything.

    A unit (an output unit of `Dense`, a filter of `Conv1D`/`Conv2D`/`Conv3D`,
    an output filter of `SeparableConv1D`/`SeparableConv2D` through its
    pointwise kernel, an output channel of `DepthwiseConv1D`/`DepthwiseConv2D`)
    is dead when every kernel weight that feeds it is exactly zero: its output
    is then a constant, `activation(bias)`. An attention head (of
    `MultiHeadAttention`, KerasHub's encoders and decoders included) is dead
    when its slice of the output projection is all zero. `compact` removes
    such units and heads.

    Args:
        model: A Keras model or layer. Nested models are entered.

    Returns:
        A dict from layer path (as in `iter_weights`, e.g. `"encoder/dense"`)
        to `(dead, total)` units (heads, for an attention layer), in model
        order.

    Raises:
        TypeError: If `model` is not a Keras model or layer.
        ValueError: If it is not built yet (it has no kernels to read).

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d")])
    >>> _ = model.get_layer("d").kernel.assign(np.array(
    ...     [[1.0, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]], "float32"))
    >>> rk.dead_units(model)
    {'d': (2, 4)}
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Invalid value for argument `model`: expected a keras.Model or "
            f"keras.layers.Layer. Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    # Unbuilt, every layer would look unit-less and the answer be `{}`.
    weights_lib.check_built(model)
    layers = [(model.name, model)] + [(p, l) for p, l, _ in weights_lib.iter_layers(model)]
    counts = {}
    for path, layer in layers:
        mask = dead_mask(layer)
        if mask is not None:
            counts[path] = (int(mask.sum()), int(mask.size))
    return counts


def output_layers(model: keras.Model) -> list[keras.layers.Layer] | None:
    """The layers whose units are `model`'s outputs, or None when the graph is
    unknown (a subclassed model).

    Walks back from the outputs, into nested models and through layers that
    carry channels through unchanged (activations, normalization, pooling,
    reshapes: anything without a kernel), to the first layers with a kernel.
    Unit-level pruning must leave these whole: their units are the outputs.
    """
    found: list[keras.layers.Layer] = []

    def visit_tensor(tensor) -> bool:
        maker = made_by(tensor)
        if maker is None:
            return True  # a model input: nothing to protect
        layer = maker.layer
        if isinstance(layer, keras.Model):
            return visit_model_output(layer, maker.output_index)
        # Any kernel stops the walk, units or not: past it, channels are no
        # longer the outputs'.
        if hasattr(layer, "kernel") or hasattr(layer, "pointwise_kernel") or unit_kernel(layer) is not None:
            if all(layer is not seen for seen in found):
                found.append(layer)
            return True
        return all(visit_tensor(t) for t in maker.inputs)

    def visit_model_output(model, index) -> bool:
        graph = Graph.of(model)
        if graph is None or not graph.outputs:
            return False
        return all(visit_tensor(t) for t in (graph.outputs if index is None else [graph.outputs[index]]))

    return found if visit_model_output(model, None) else None


def _reads_features(layer) -> bool:
    """Whether `layer` reads its input's features (last axis) through the
    rows of a 2-D unit kernel (a `Dense`)."""
    kernel = unit_kernel(layer)
    return kernel is not None and reads_layer_inputs(layer) and len(kernel.shape) == 2


def _input_readers(graph, tensor):
    """The layers reading the features (last axis) of `tensor` through the
    rows of their kernel, through per-feature layers; None if any other
    layer reads them."""
    readers = []
    for call in graph.readers(tensor):
        single = len(call.inputs) == 1
        if single and _reads_features(call.layer):
            readers.append(call.layer)
        elif single and layers_lib.kind_of(call.layer).per_feature:
            further = _input_readers(graph, call.outputs[0])
            if further is None:
                return None
            readers.extend(further)
        else:
            return None
    return readers


def dropped_inputs(model: keras.Model) -> dict[str, tuple[list[int], int]] | None:
    """The input features no weight reads: for each model input read only by
    `Dense` layers (directly, or through per-feature layers such as
    `Normalization`, `BatchNormalization`, `Dropout`), the features (indices
    on the last axis) whose every outgoing weight in those layers is exactly
    zero, with the number of features.

    Inputs read by any other layer (a convolution, a concatenation, ...) are
    left out; a model without a functional graph (subclassed) gives None.
    """
    graph = Graph.of(model)
    if graph is None:
        return None
    found = {}
    for tensor in graph.inputs:
        readers = _input_readers(graph, tensor)
        if not readers:
            continue
        rows = [np.all(ops.convert_to_numpy(unit_kernel(layer)) == 0, axis=1) for layer in readers]
        unused = np.logical_and.reduce(rows)
        found[made_by(tensor).layer.name] = ([int(i) for i in np.flatnonzero(unused)], int(unused.size))
    return found
