"""How `compact` removes channels through a layer: the `Compaction` of a
`LayerKind`, and the ones for layers with units.

`compact` gives every tensor of the graph, per channel (last axis), a
constant value or "not constant" (NaN). A compaction plans one call of its
layer: either "unit" (it consumes channels, slicing the input rows of its
kernel and folding `constant * weights` into its bias, and produces new ones,
its dead units being the only source of constants) or "link" (it ties input
channels to output channels: a channel goes on both sides or on neither, its
constant passing through). Once `compact` knows which channels go, the
compaction edits the layer's config and gives its new weights.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

# Activations that act on each entry alone: a constant channel stays constant
# and the other channels don't see it. (softmax, glu, sparsemax mix channels.)
ELEMENTWISE = frozenset(
    "linear relu relu6 sigmoid tanh elu selu gelu silu softplus softsign "
    "exponential hard_sigmoid hard_silu leaky_relu mish celu log_sigmoid "
    "hard_tanh tanh_shrink soft_shrink hard_shrink squareplus sparse_plus "
    "sparse_sigmoid threshold".split()
)


class Unsupported(Exception):
    """Raised by a `Compaction` for a call `compact` leaves as it is (its
    input and output channels all stay); the message says why."""


@dataclasses.dataclass
class Plan:
    """How one layer call takes part in `compact`.

    Attributes:
        layer: The layer.
        kind: `"unit"` (consumes and produces channels) or `"link"` (ties
            input to output channels through `classes`), or `"skip"`.
        inputs: The call's input tensors.
        outputs: The call's output tensors.
        classes: For a link, one array per input and output tensor giving
            each channel's class: channels of one class go together.
        input_ok: For a unit, which input channels may be removed (None:
            every constant one).
        input_why: Why the others may not.
        ignored: Which channels of the (single) input no output reads (a
            depthwise convolution's dead channels): a channel that every
            reader ignores may go even where it is not constant.
        compaction: The `Compaction` that made the plan.
    """

    layer: object
    kind: str
    inputs: list
    outputs: list
    classes: list | None = None
    input_ok: np.ndarray | None = None
    input_why: str | None = None
    ignored: np.ndarray | None = None
    compaction: object | None = None


class Compaction:
    """How `compact` treats the layers of one kind (the `compact` field of
    a `LayerKind`). Subclasses define `plan` and, if the layer's config or
    weights change with its channels, `edit`."""

    def keeps_channels(self, layer) -> bool:
        """Whether each output channel of `layer` is computed from the same
        input channel alone (normalization, elementwise activations,
        dropout, pooling, zero padding): `channel_source` walks through."""
        return False


    def plan(self, layer, inputs: list, outputs: list, constants: list) -> tuple[Plan, list, list]:
        """Plans one call of `layer` on symbolic `inputs` giving `outputs`.

        Args:
            layer: The layer.
            inputs: The call's input tensors (channels last, known).
            outputs: Its output tensors.
            constants: Per input, one float per channel: its constant value,
                or NaN where it is not constant.

        Returns:
            `(plan, output constants, output reasons)`: a `Plan`, one
            constants array per output, and per output None or why its
            channels are not constant.

        Raises:
            Unsupported: To leave this call as it is.
        """
        raise NotImplementedError

    def edit(self, layer, config: dict, keep_in: np.ndarray, keep_out: np.ndarray, constants_in: np.ndarray):
        """Changes `config` (the layer's config, in place) to the channels
        kept, and returns the new weights: a dict from variable attribute
        to value, a list for `set_weights`, or None to keep them as they
        are. `keep_in`/`keep_out`: the kept channels of the first input and
        output; `constants_in`: the constants of the first input (0 where
        none)."""
        return None


def channels(tensor) -> int | None:
    """The channel (last) axis size of `tensor`, or None when unknown."""
    shape = tensor.shape
    if len(shape) < 2 or shape[-1] is None:
        return None
    return int(shape[-1])


def activation_name(fn) -> str:
    """The name Keras serializes activation `fn` by."""
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # a custom callable Keras can't name
        return getattr(fn, "__name__", repr(fn))
    return name if isinstance(name, str) else str(name.get("class_name", name))


def apply(fn, values: np.ndarray) -> np.ndarray:
    """`fn` on the known (non-NaN) entries of `values`, in float32 as the
    model computes."""
    out = np.full(values.shape, np.nan)
    known = ~np.isnan(values)
    if known.any():
        x = ops.convert_to_tensor(values[known][None].astype("float32"))
        out[known] = np.asarray(ops.convert_to_numpy(ops.cast(fn(x), "float32")))[0]
    return out


def to_numpy(variable) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)


def check_channels_last(layer) -> None:
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format != "channels_last":
        raise Unsupported(f"data_format='{data_format}' (only channels_last is supported)")


def pads(layer) -> bool:
    """Whether a convolution adds zeros around its input: `padding="same"`
    or `"causal"` with a window wider than one entry (a 1x1 window never
    reaches past the input, whatever its stride)."""
    window = getattr(layer, "kernel_size", None) or (2,)  # a layer of your own: assume it is wider
    return layer.padding != "valid" and any(size > 1 for size in window)


def check_single(inputs, outputs) -> None:
    if len(inputs) != 1 or len(outputs) != 1:
        raise Unsupported("called on several tensors")


def activated(activation, pre: np.ndarray) -> tuple[np.ndarray, str | None]:
    """`activation` (None: linear) of the pre-activation constants (NaN:
    none), and why the constants are lost, if they are."""
    if activation is None:
        return pre, None
    name = activation_name(activation)
    if name not in ELEMENTWISE:
        # It mixes units: a dead unit's output depends on the live ones.
        return np.full(pre.shape, np.nan), f"activation '{name}' is not elementwise"
    return apply(activation, pre), None


@dataclasses.dataclass(frozen=True)
class Units(Compaction):
    """A layer computing `activation(inputs @ kernel + bias)` per position,
    units on the kernel's last axis and input channels on the one before
    (`Dense`, or a layer of your own that does the same).

    A dead unit (its kernel column all zero) outputs the constant
    `activation(bias)`; it is removed by rebuilding the layer from its
    config with `units_argument` set to the units kept, the kernel's
    columns (and bias) sliced. Constant input channels are removed by
    slicing the kernel's rows and folding `constant @ rows` into the bias.

    Args:
        units_argument: The config argument that sets the number of units.
        kernel: The kernel's attribute.
        bias: The bias' attribute (None when the layer has none).
        activation: The attribute of the activation applied after the bias
            (it must act on each unit alone to fold constants), or None for
            a linear layer.
        use_bias_argument: The config argument that gives the layer a bias
            when a fold needs one, or None (then only zero constants are
            folded into a layer without bias).
    """

    units_argument: str = "units"
    kernel: str = "kernel"
    bias: str | None = "bias"
    activation: str | None = "activation"
    use_bias_argument: str | None = "use_bias"

    def _bias(self, layer):
        return None if self.bias is None else getattr(layer, self.bias, None)

    def check(self, layer, plan, constants_in) -> None:
        """Refuses what the slicing cannot do exactly (in a subclass)."""

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise Unsupported("LoRA or quantization is enabled")
        plan = Plan(layer, "unit", inputs, outputs, input_ok=np.ones(channels(inputs[0]), bool), compaction=self)
        bias = self._bias(layer)
        if bias is None and self.use_bias_argument is None:
            plan.input_ok = constants[0] == 0
            plan.input_why = f"consumer '{layer.name}' has no bias to fold the constant into"
        self.check(layer, plan, constants[0])
        from keras_regkit.pruning import units as units_lib  # the one definition of a dead unit

        values = to_numpy(bias) if bias is not None else np.zeros(channels(outputs[0]))
        activation = getattr(layer, self.activation) if self.activation else None
        const, why = activated(activation, np.where(units_lib.dead_mask(layer), values, np.nan))
        return plan, [const], [why]

    def sliced_kernels(self, layer, keep_in, keep_out, constants_in):
        """The sliced kernels, by attribute, and what the removed input
        channels add to the bias."""
        kernel = to_numpy(getattr(layer, self.kernel))
        gone = ~keep_in
        # A valid-padded window sums its whole kernel over a constant input.
        summed = kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)
        fold = constants_in[gone] @ summed[gone]
        return {self.kernel: kernel[..., keep_in, :][..., keep_out]}, fold

    def edit(self, layer, config, keep_in, keep_out, constants_in):
        weights, fold = self.sliced_kernels(layer, keep_in, keep_out, constants_in)
        bias = self._bias(layer)
        values = (to_numpy(bias) if bias is not None else np.zeros(fold.shape)) + fold
        config[self.units_argument] = int(keep_out.sum())
        if bias is not None or np.any(values[keep_out]):
            if bias is None:
                config[self.use_bias_argument] = True
            weights[self.bias] = values[keep_out]
        return weights


@dataclasses.dataclass(frozen=True)
class ConvUnits(Units):
    """A convolution's filters, as `Units` (channels last, no groups); a
    consumer that pads takes only constants that are exactly 0, since
    folding a nonzero one into the bias would be wrong at the borders."""

    units_argument: str = "filters"

    def check(self, layer, plan, constants_in):
        check_channels_last(layer)
        if getattr(layer, "groups", 1) != 1:
            raise Unsupported(f"groups={layer.groups}")
        if pads(layer):
            # Zero padding meets a nonzero constant at the borders.
            plan.input_ok = plan.input_ok & (constants_in == 0)
            plan.input_why = f"consumer '{layer.name}' has padding='{layer.padding}' and the constant is not 0"


@dataclasses.dataclass(frozen=True)
class SeparableConvUnits(ConvUnits):
    """A separable convolution's output filters (its pointwise kernel's
    units); an input channel goes with its depthwise slices."""

    kernel: str = "pointwise_kernel"

    def sliced_kernels(self, layer, keep_in, keep_out, constants_in):
        gone = ~keep_in
        depthwise, pointwise = to_numpy(layer.depthwise_kernel), to_numpy(layer.pointwise_kernel)
        spatial = tuple(range(depthwise.ndim - 2))
        count, multiplier = depthwise.shape[-2:]
        rows = pointwise.reshape(count, multiplier, -1)
        # Depthwise output of channel c is c * sum(window) per multiplier;
        # the pointwise kernel then mixes those into every filter.
        through = constants_in[gone, None] * depthwise.sum(axis=spatial)[gone]
        fold = np.einsum("cm,cmf->f", through, rows[gone])
        pointwise = rows[keep_in][:, :, keep_out].reshape(pointwise.shape[:-2] + (-1, int(keep_out.sum())))
        return {"depthwise_kernel": depthwise[..., keep_in, :], "pointwise_kernel": pointwise}, fold
