"""Layers as one matrix product, `outputs = rows(inputs) @ matrix`: what a
layer-wise reconstruction needs of `Dense`, `EinsumDense` and `Conv1D`/
`Conv2D`/`Conv3D` (im2col).

`rows` turns one batch of a layer's inputs into a 2-D array, one row per
output position (sample, token, pixel), one column per kernel entry a unit
reads there; `matrix` is the kernel as `(inputs, units)`; `assign` writes
such a matrix back into the kernel. The columns run over the kernel's input
axes with the last (a Dense row, a convolution's input channel, an
`EinsumDense`'s last contracted axis) fastest, so `m` consecutive columns
are `m` consecutive inputs of that axis when `group_axis` splits into
groups of `m`.

With `bias=True`, a layer's bias (one per unit) is one more input, a
column of ones last in `rows` and the bias as the last row of `matrix`: a
reconstruction then updates it with the kernel (`free` such columns, never
cut).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


class LinearLayer:
    """A covered layer's kernel as a `(inputs, units)` matrix.

    Attributes:
        layer: The layer.
        variable: Its kernel.
        inputs: Columns of `rows` (rows of `matrix`).
        group_axis: The size of the kernel's fastest input axis (N:M groups
            lie along it).
    """

    def __init__(self, layer, variable, input_axes: list[int], unit_axes: list[int], bias=None):
        self.layer, self.variable, self.bias = layer, variable, bias
        shape = tuple(variable.shape)
        self._order = input_axes + unit_axes
        self._transposed_shape = tuple(shape[a] for a in self._order)
        self.inputs = math.prod(shape[a] for a in input_axes)
        self.free = 0 if bias is None else 1
        self.group_axis = shape[input_axes[-1]]

    def kernel_rows(self, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows(self, inputs: np.ndarray) -> np.ndarray:
        rows = self.kernel_rows(inputs)
        return rows if self.bias is None else np.concatenate([rows, np.ones((len(rows), 1), rows.dtype)], axis=1)

    def matrix(self) -> np.ndarray:
        kernel = np.asarray(ops.convert_to_numpy(self.variable.value), dtype="float64")
        matrix = np.transpose(kernel, self._order).reshape(self.inputs, -1)
        if self.bias is None:
            return matrix
        return np.concatenate([matrix, np.asarray(ops.convert_to_numpy(self.bias.value)).reshape(1, -1)])

    def assign(self, matrix: np.ndarray) -> None:
        if self.bias is not None:
            self.bias.assign(matrix[-1].reshape(self.bias.shape).astype(self.bias.dtype))
            matrix = matrix[:-1]
        kernel = np.transpose(matrix.reshape(self._transposed_shape), np.argsort(self._order))
        self.variable.assign(kernel.astype(self.variable.dtype))


class DenseLayer(LinearLayer):
    def __init__(self, layer, variable, bias):
        super().__init__(layer, variable, [0], [1], bias)

    def kernel_rows(self, inputs):
        return inputs.reshape(-1, self.inputs)


class EinsumLayer(LinearLayer):
    """An `EinsumDense` whose kernel's axes are each contracted with the
    inputs or carried to the outputs (every form Keras' and KerasHub's
    attention and feed-forward projections use). The contracted axes run
    in the order the inputs hold them, so the last (`group_axis`) is the
    inputs' innermost: N:M groups lie along it, as `einsum_input_axis`
    says."""

    def __init__(self, layer, variable, inputs_spec: str, kernel_spec: str, bias):
        contracted = sorted((i for i, axis in enumerate(kernel_spec) if axis in inputs_spec),
                            key=lambda i: inputs_spec.index(kernel_spec[i]))
        super().__init__(layer, variable, contracted, [i for i in range(len(kernel_spec)) if i not in contracted],
                         bias)
        self._inputs_spec = inputs_spec
        self._contracted = [kernel_spec[i] for i in contracted]

    def kernel_rows(self, inputs):
        # The letters after an ellipsis count from the end.
        spec = self._inputs_spec
        before, _, after = spec.partition("...")
        position = {axis: i for i, axis in enumerate(before)}
        position.update({axis: inputs.ndim - len(after) + i for i, axis in enumerate(after)})
        axes = [position[axis] for axis in self._contracted]
        return np.moveaxis(inputs, axes, range(-len(axes), 0)).reshape(-1, self.inputs)


class ConvLayer(LinearLayer):
    """A convolution as im2col: each output position's receptive field,
    kernel offsets then input channels, as one row."""

    def __init__(self, layer, variable, bias):
        rank = len(variable.shape)
        super().__init__(layer, variable, list(range(rank - 1)), [rank - 1], bias)

    def kernel_rows(self, inputs):
        layer = self.layer
        if layer.data_format == "channels_first":
            inputs = np.moveaxis(inputs, 1, -1)
        spatial = inputs.ndim - 2
        sizes, strides, dilations = layer.kernel_size, layer.strides, layer.dilation_rate
        reach = [(k - 1) * d + 1 for k, d in zip(sizes, dilations)]
        pads = [(0, 0)] * inputs.ndim
        for i in range(spatial):
            length = inputs.shape[1 + i]
            if layer.padding == "same":
                total = max((math.ceil(length / strides[i]) - 1) * strides[i] + reach[i] - length, 0)
                pads[1 + i] = (total // 2, total - total // 2)
            elif layer.padding == "causal":
                pads[1 + i] = (reach[i] - 1, 0)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(inputs, pads), reach, axis=tuple(range(1, 1 + spatial)))
        # (batch, *positions, channels, *reach): strides over positions, dilation within the window.
        windows = windows[(slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),)
                          + tuple(slice(None, None, d) for d in dilations)]
        return np.moveaxis(windows, 1 + spatial, -1).reshape(-1, self.inputs)


def _einsum_specs(equation: str) -> tuple[str, str, str]:
    inputs, rest = equation.replace(" ", "").split(",")
    kernel, outputs = rest.split("->")
    return inputs, kernel, outputs


def einsum_input_axis(layer) -> int | None:
    """The axis of an `EinsumDense` kernel that N:M groups lie along: of the
    axes contracted with the inputs, the one the inputs hold innermost (the
    last such letter of the inputs' spec: `"abc,cde->abde"`, the query,
    key and value of an attention layer, gives 0, the hidden axis;
    `"abcd,cde->abe"`, its output, gives 1, the head dimension). None for a
    form `linear_layer` does not cover."""
    if not isinstance(layer, keras.layers.EinsumDense) or isinstance(_einsum_form(layer), str):
        return None
    inputs, kernel, _ = _einsum_specs(layer.equation)
    return max((i for i, axis in enumerate(kernel) if axis in inputs), key=lambda i: inputs.index(kernel[i]))


def _einsum_form(layer) -> str | None:
    """Why an `EinsumDense`'s kernel is not covered, or None."""
    inputs, kernel, outputs = _einsum_specs(layer.equation)
    letters = inputs.replace("...", "")
    shared = [a for a in kernel if a in letters and a in outputs]
    if shared or any(a not in letters and a not in outputs for a in kernel) or "..." in kernel:
        return (f"an EinsumDense with equation {layer.equation!r}: its kernel has axes neither only "
                "contracted with the inputs nor only carried to the outputs")
    if not any(a in letters for a in kernel):
        return f"an EinsumDense with equation {layer.equation!r}: its kernel reads none of its inputs' axes"
    return None


def linear_layer(layer, variable, bias: bool = False) -> LinearLayer | str:
    """The `LinearLayer` of `variable` (a layer's kernel), or why the layer
    is not covered; with `bias`, its bias as one more input where it has one
    per unit (an `EinsumDense`'s over all of its output axes)."""
    own_bias = getattr(layer, "bias", None) if bias else None
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None) is not None:
        return "a LoRA-enabled or quantized layer (its kernel is not one variable)"
    if variable is not getattr(layer, "kernel", None):
        return "not its layer's kernel"
    if isinstance(layer, keras.layers.Dense) and len(variable.shape) == 2:
        return DenseLayer(layer, variable, own_bias)
    if isinstance(layer, keras.layers.EinsumDense):
        why = _einsum_form(layer)
        if why is not None:
            return why
        inputs, kernel, _ = _einsum_specs(layer.equation)
        carried = "".join(a for a in kernel if a not in inputs)
        return EinsumLayer(layer, variable, inputs, kernel, own_bias if layer.bias_axes == carried else None)
    if isinstance(layer, CONVOLUTIONS):
        if layer.groups != 1:
            return f"a grouped convolution (groups={layer.groups})"
        return ConvLayer(layer, variable, own_bias)
    return f"a {type(layer).__name__}"
