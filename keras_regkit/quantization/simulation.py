"""`Int8Simulation`: the converter's full int8 in a model's forward pass
(see `keras_regkit.quantization` for what is simulated)."""

from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_regkit._step_functions import rebuild_step_functions, step_functions_read_variables_live
from keras_regkit.deploy.calibration import CALIBRATION_SAMPLES
from keras_regkit.deploy.inputs import conform
from keras_regkit.layers.graph import Graph
from keras_regkit.pruning.calibration import wrapping_calls

_CALIBRATION_BATCH = 64
# Layers whose output the converter gives their input's scale: no rounding.
_SAME_SCALE = (
    keras.layers.Reshape, keras.layers.Flatten, keras.layers.Permute, keras.layers.Identity,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.AlphaDropout, keras.layers.ActivityRegularization, keras.layers.InputLayer,
)
# Outputs the converter quantizes with a fixed range, not a calibrated one.
_FIXED_RANGES = {"softmax": (0.0, 255 / 256), "sigmoid": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}


def kernels(layer) -> list[tuple]:
    """The kernels of `layer` the converter quantizes per channel, each
    with the axes its per-channel scale reduces over; [] for a layer
    without such kernels."""
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)) and not isinstance(
            layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)):
        if getattr(layer, "groups", 1) == 1:
            return [(layer.kernel, tuple(range(len(layer.kernel.shape) - 1)))]
    if isinstance(layer, keras.layers.Dense):
        return [(layer.kernel, (0,))]
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        return [(layer.kernel, tuple(range(len(layer.kernel.shape) - 2)))]
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        depthwise, pointwise = layer.depthwise_kernel, layer.pointwise_kernel
        return [(depthwise, tuple(range(len(depthwise.shape) - 2))),
                (pointwise, tuple(range(len(pointwise.shape) - 1)))]
    return []


def fake_quant_kernel(kernel, axes):
    """`kernel` rounded to symmetric int8 per channel (scale `max|w| / 127`
    over `axes`, half away from zero, as the converter rounds), with a
    straight-through gradient. Zeros stay exactly zero."""
    scale = ops.max(ops.abs(kernel), axis=axes, keepdims=True) / 127.0
    scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    scaled = kernel / scale
    rounded = ops.clip(ops.sign(scaled) * ops.floor(ops.abs(scaled) + 0.5), -127.0, 127.0) * scale
    return kernel + ops.stop_gradient(rounded - kernel)


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(activation, "__name__", None) if callable(activation) else None


def _fuses_as_activation(layer) -> bool:
    """Whether the converter fuses `layer` into the op before it (RELU,
    RELU6)."""
    if isinstance(layer, keras.layers.ReLU):
        return (not layer.negative_slope and not layer.threshold and layer.max_value in (None, 6.0))
    return isinstance(layer, keras.layers.Activation) and _activation_name(layer) in ("relu", "relu6")


def _roles(model) -> tuple[dict, list, list]:
    """`{id(layer): (layer, role)}` for each layer of the model's graph,
    role one of "point" (its output rounded, range calibrated), "fixed"
    (rounded, a fixed range), "pass" (not rounded: fused into the next
    layer, or its input's scale) and "float" (left float); the layers left
    float; and the `(point, reader)` pairs of `_widened_by`."""
    graph = Graph.of(model)
    if graph is None:
        raise ValueError(
            "Simulated int8 reads the model's graph (which tensors the converter quantizes): it needs a "
            "Functional or Sequential model with known inputs. Received: a model of type "
            f"{type(model).__name__} without one. Build it with `keras.Input`.")
    roles, left_float = {}, []
    for call in graph.calls:
        layer = call.layer
        if call.is_input or id(layer) in roles:
            continue
        if isinstance(layer, _SAME_SCALE) or _activation_name(layer) == "linear" and not layer.weights:
            role = "pass"
        elif layer.weights and not kernels(layer) and not isinstance(
                layer, (keras.layers.BatchNormalization, keras.layers.Normalization)):
            role = "float"
            left_float.append(layer)
        elif _activation_name(layer) in _FIXED_RANGES:
            role = "fixed"
        elif _fused_into_reader(graph, call):
            role = "pass"
        else:
            role = "point"
        roles[id(layer)] = (layer, role)
    widened = [pair for call in graph.calls if not call.is_input and roles[id(call.layer)][1] == "point"
               for pair in [_widened_by(graph, call, roles)] if pair]
    return roles, left_float, widened[::-1]  # the last first: a widened range widens the ones before


def _widened_by(graph, call, roles):
    """`(layer, reader)` when the converter gives `call`'s output the union
    of its range and its one reader's: a Concatenate (whose inputs share its
    scale), or an Add or Multiply that reads it first among
    the inputs nothing else reads (measured with
    ai-edge-litert 2.3's converter: the runtime computes them in place, in
    their first input's buffer, and the calibration records both values
    there)."""
    if len(call.outputs) != 1 or len(graph.readers(call.outputs[0])) != 1:
        return None
    reader = graph.readers(call.outputs[0])[0]
    in_place = [t for t in reader.inputs if len(graph.readers(t)) == 1]  # buffers free to reuse
    if not (isinstance(reader.layer, keras.layers.Concatenate) or isinstance(
            reader.layer, (keras.layers.Add, keras.layers.Multiply)) and in_place[0] is call.outputs[0]):
        return None
    if roles.get(id(reader.layer), (None, ""))[1] == "pass":  # an Add fused with its ReLU: the ReLU's range
        after = graph.readers(reader.outputs[0])
        reader = after[0] if len(after) == 1 else reader
    return (call.layer.name, reader.layer.name) if roles.get(id(reader.layer), (None, ""))[1] == "point" else None


def _fused_into_reader(graph, call) -> bool:
    """Whether the converter fuses this call into the one layer that reads
    its output: a Conv/Dense into a BatchNormalization (folded) or a
    ReLU/ReLU6, a BatchNormalization or an Add into a ReLU/ReLU6."""
    layer = call.layer
    convolution = bool(kernels(layer)) and _activation_name(layer) in (None, "linear")
    if not (convolution or isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Add))):
        return False
    if len(call.outputs) != 1 or any(t is call.outputs[0] for t in graph.outputs):
        return False
    readers = graph.readers(call.outputs[0])
    if len(readers) != 1:
        return False
    reader = readers[0].layer
    return _fuses_as_activation(reader) or convolution and isinstance(reader, keras.layers.BatchNormalization)


class Int8Simulation:
    """The LiteRT converter's full int8 simulated in `model`'s forward pass
    (see the module's docstring for what is simulated and what is not).

    Used as a context manager, it starts (and calibrates) on entry and
    stops on exit: inside, `model(x)` gives what the full-int8 file of
    `export(model, path, int8=True, representative_data=...)` gives, to the
    converter's rounding; `fit` trains through the rounding.

    ```python
    with rk.quantization.Int8Simulation(model, x_train[:200]):
        int8_outputs = model(x_test)
    ```

    Args:
        model: A built Functional or Sequential model.
        representative_data: Inputs like the model's (NumPy arrays, as
            `export`'s `representative_data`): the activations' ranges are
            measured on its first `CALIBRATION_SAMPLES` samples, as the
            converter's.

    Raises:
        TypeError, ValueError: `representative_data` not in the model's
            input structure, shape or dtype, or with NaN or inf; a model
            without a graph. Nothing is changed.
    """

    def __init__(self, model: keras.Model, representative_data):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Invalid value for argument `model`: expected a keras.Model. Received: {model!r}")
        if representative_data is None:
            raise ValueError(
                "Simulated int8 needs `representative_data=`: inputs like the model's (a few hundred training "
                "samples), from which the activations' ranges are set, as `export(int8=True)` needs them.")
        data = conform(representative_data, model, "representative_data")
        self.model = model
        self.data = keras.tree.map_structure(lambda a: a[:CALIBRATION_SAMPLES], data)
        self._roles, self.left_float, self._widened = _roles(model)
        self._ranges: dict = {}
        self._mode = None
        self._stack = None
        self._warned = False

    @property
    def running(self) -> bool:
        return self._stack is not None

    def start(self) -> None:
        """Wraps the layers' calls (and calibrates, the first time)."""
        if self.running:
            return
        if self.left_float and not self._warned:
            self._warned = True  # once: a shrink restarts it after refreshing BatchNormalization
            warnings.warn(
                "Simulated int8 leaves these layers float (the converter quantizes some such layers and not "
                f"others, so the int8 file may differ from the simulation there): "
                f"{[f'{layer.name} ({type(layer).__name__})' for layer in self.left_float]}", stacklevel=3)
        self._stack = contextlib.ExitStack()
        layers = [layer for layer, role in self._roles.values() if role != "pass" and role != "float"]
        self._stack.enter_context(wrapping_calls([self.model, *layers], self._call))
        self._mode = "simulate"
        self.calibrate()
        self._rebuild()  # steps traced before now called the layers unwrapped

    def stop(self) -> None:
        """Unwraps the calls: the model is the float model again."""
        if not self.running:
            return
        self._stack.close()
        self._stack, self._mode = None, None
        self._rebuild()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def calibrate(self) -> None:
        """Measures the activations' ranges on the representative data, as
        the converter will: the float model in inference mode, the min and
        max of each rounded tensor, widened to hold 0."""
        if not self.running:
            raise RuntimeError("Int8Simulation.calibrate() needs the simulation started (`start()` or `with`).")
        seen: dict = {}
        self._mode, self._seen = "record", seen
        try:
            count = len(keras.tree.flatten(self.data)[0])
            for start in range(0, count, _CALIBRATION_BATCH):
                self.model(keras.tree.map_structure(lambda a: a[start:start + _CALIBRATION_BATCH], self.data),
                           training=False)
        finally:
            self._mode = "simulate"
        for point, reader in self._widened:
            ours, theirs = seen.get(("layer", point)), seen.get(("layer", reader))
            if ours and theirs:
                seen[("layer", point)] = (min(ours[0], theirs[0]), max(ours[1], theirs[1]))
        changed = False
        for key, (low, high) in seen.items():
            low, high = min(low, 0.0), max(high, 0.0)
            if not (np.isfinite(low) and np.isfinite(high)):
                raise ValueError(
                    f"Simulated int8: the float model's {key[1]} reaches NaN or inf on `representative_data`: no "
                    "int8 range can hold it. Check the model's weights and the data.")
            high = max(high, low + 1e-6)  # a tensor of zeros: any range holds it
            if key not in self._ranges:
                self._ranges[key] = keras.Variable(np.array([low, high], "float32"), trainable=False,
                                                   name="int8_range")
                changed = True
            elif not np.array_equal(keras.ops.convert_to_numpy(self._ranges[key]), [low, high]):
                self._ranges[key].assign(np.array([low, high], "float32"))
                changed = True
        if changed and not step_functions_read_variables_live():
            self._rebuild()  # JAX's compiled steps hold the ranges as constants

    def quantized_kernels(self) -> list:
        """The kernels the simulation rounds (per channel)."""
        return [v for layer, _ in self._roles.values() for v, _ in kernels(layer)]

    def ranges(self) -> dict:
        """The calibrated ranges: `{name: (min, max)}`, by layer name (and
        `"input:<i>"` for the model's inputs)."""
        return {key[1]: tuple(float(v) for v in keras.ops.convert_to_numpy(value))
                for key, value in self._ranges.items()}

    def _rebuild(self) -> None:
        rebuild_step_functions(self.model, losses_changed=True)
        if getattr(self.model, "predict_function", None) is not None:
            self.model.make_predict_function(force=True)

    # -- the wrapped calls -------------------------------------------------
    def _call(self, layer, call, inputs, *args, **kwargs):
        if layer is self.model:
            flat = keras.tree.flatten(inputs)
            rounded = [self._round(("input", f"input:{i}"), x) for i, x in enumerate(flat)]
            return call(keras.tree.pack_sequence_as(inputs, rounded), *args, **kwargs)
        role = self._roles[id(layer)][1]
        if self._mode == "simulate" and kernels(layer):
            quantized = {id(v): fake_quant_kernel(v.value, axes) for v, axes in kernels(layer)}
            mapping = [(v, quantized.get(id(v), v.value)) for v in layer.weights]
            with keras.StatelessScope(state_mapping=mapping):
                outputs = call(inputs, *args, **kwargs)
        else:
            outputs = call(inputs, *args, **kwargs)
        if role == "fixed" and self._mode == "simulate":
            low, high = _FIXED_RANGES[_activation_name(layer)]
            return keras.quantizers.fake_quant_with_min_max_vars(outputs, low, high, num_bits=8)
        if role == "point":
            return keras.tree.map_structure(lambda t: self._round(("layer", layer.name), t), outputs)
        return outputs

    def _round(self, key, tensor):
        if not _is_float(tensor):
            return tensor
        if self._mode == "record":
            values = ops.convert_to_numpy(tensor)
            low, high = self._seen.get(key, (np.inf, -np.inf))
            self._seen[key] = (min(low, float(values.min())), max(high, float(values.max())))
            return tensor
        limits = self._ranges[key]
        return keras.quantizers.fake_quant_with_min_max_vars(tensor, limits[0], limits[1], num_bits=8)


def _is_float(tensor) -> bool:
    return hasattr(tensor, "dtype") and "float" in keras.backend.standardize_dtype(tensor.dtype)
