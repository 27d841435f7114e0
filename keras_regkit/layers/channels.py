"""Compactions of the layers that link input channels to output channels:
a channel is removed on both sides or on neither, and its constant passes
through exactly (or is lost where the layer mixes it)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from keras_regkit.layers.compaction import (
    ELEMENTWISE, Compaction, Plan, Unsupported, activated, activation_name, apply, channels,
    check_channels_last, check_single, pads, to_numpy,
)


def _identity_link(compaction, layer, inputs, outputs, constants_out):
    identity = [np.arange(channels(inputs[0])), np.arange(channels(outputs[0]))]
    return Plan(layer, "link", inputs, outputs, identity, compaction=compaction), [constants_out], [None]


@dataclasses.dataclass(frozen=True)
class DepthwiseChannels(Compaction):
    """A depthwise convolution: output channel `c * multiplier + m` reads
    input channel `c` alone, so they go together."""

    def plan(self, layer, inputs, outputs, constants):
        from keras_regkit.pruning import units as units_lib  # the one definition of a dead unit

        check_single(inputs, outputs)
        check_channels_last(layer)
        multiplier = layer.depth_multiplier
        n_in, n_out = channels(inputs[0]), channels(outputs[0])
        plan = Plan(layer, "link", inputs, outputs, [np.arange(n_in), np.arange(n_out) // multiplier],
                    compaction=self)
        kernel = to_numpy(layer.kernel)
        spatial = tuple(range(kernel.ndim - 2))
        bias = to_numpy(layer.bias) if layer.use_bias else np.zeros(n_out)
        # A constant input gives `c * sum(window) + bias` where the window
        # never leaves the input (padding="valid") or the constant is 0; a
        # zero kernel slice gives its bias whatever the input.
        source = np.repeat(constants[0], multiplier)
        if pads(layer):
            source = np.where(source == 0, 0.0, np.nan)
        pre = source * kernel.sum(axis=spatial).reshape(-1) + bias
        dead = units_lib.dead_mask(layer)
        pre[dead] = bias[dead]
        # An input channel all of whose output channels are dead is read by none.
        plan.ignored = dead.reshape(n_in, multiplier).all(axis=1)
        const, why = activated(layer.activation, pre)
        return plan, [const], [why]

    def edit(self, layer, config, keep_in, keep_out, constants_in):
        bias = {"bias": to_numpy(layer.bias)[keep_out]} if layer.use_bias else {}
        return {"kernel": to_numpy(layer.kernel)[..., keep_in, :], **bias}


def difference(stacked: np.ndarray, axis: int = 0) -> np.ndarray:
    """The first minus the second, as `keras.layers.Subtract`."""
    return np.take(stacked, 0, axis=axis) - np.take(stacked, 1, axis=axis)


@dataclasses.dataclass(frozen=True)
class Merge(Compaction):
    """A merge of same-shaped tensors channel by channel (`Add`,
    `Multiply`, ...): a channel goes only where it goes in every input.

    Args:
        combine: How the inputs' constants combine, a NumPy reduction
            called as `combine(stacked, axis=0)` (NaN wherever one is).
    """

    combine: Callable

    def plan(self, layer, inputs, outputs, constants):
        if len({tuple(t.shape[1:]) for t in inputs + outputs}) != 1:
            raise Unsupported("its inputs broadcast against each other")
        classes = [np.arange(channels(outputs[0]))] * (len(inputs) + 1)
        const = self.combine(np.stack(constants), axis=0)
        return Plan(layer, "link", inputs, outputs, classes, compaction=self), [const], [None]


@dataclasses.dataclass(frozen=True)
class Concatenation(Compaction):
    """A concatenation on the channel axis: each input's channels keep
    their offsets."""

    def plan(self, layer, inputs, outputs, constants):
        if layer.axis not in (-1, len(outputs[0].shape) - 1):
            raise Unsupported(f"axis={layer.axis} is not the channel (last) axis")
        sizes = [channels(t) for t in inputs]
        offsets = np.cumsum([0] + sizes)
        classes = [np.arange(n) + o for n, o in zip(sizes, offsets)] + [np.arange(channels(outputs[0]))]
        plan = Plan(layer, "link", inputs, outputs, classes, compaction=self)
        return plan, [np.concatenate(constants)], [None]


@dataclasses.dataclass(frozen=True)
class BatchNorm(Compaction):
    """`BatchNormalization` on the channel axis, at inference: one value
    per channel in each of its weights."""

    def keeps_channels(self, layer) -> bool:
        return True

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        axis = layer.axis if isinstance(layer.axis, int) else None
        if axis not in (-1, len(inputs[0].shape) - 1):
            raise Unsupported(f"axis={layer.axis} is not the channel (last) axis")
        gamma = to_numpy(layer.gamma) if layer.scale else 1.0
        beta = to_numpy(layer.beta) if layer.center else 0.0
        # Inference-mode BatchNormalization, as `ops.batch_normalization`.
        const = (constants[0] - to_numpy(layer.moving_mean)) / np.sqrt(
            to_numpy(layer.moving_variance) + layer.epsilon
        ) * gamma + beta
        return _identity_link(self, layer, inputs, outputs, const)

    def edit(self, layer, config, keep_in, keep_out, constants_in):
        return [to_numpy(v)[keep_in] for v in layer.weights]


@dataclasses.dataclass(frozen=True)
class ActivationFunction(Compaction):
    """`keras.layers.Activation`: only an elementwise activation keeps a
    constant channel constant and the others apart."""

    def keeps_channels(self, layer) -> bool:
        return activation_name(layer.activation) in ELEMENTWISE

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        name = activation_name(layer.activation)
        if name not in ELEMENTWISE:
            raise Unsupported(f"activation '{name}' is not elementwise")
        return _identity_link(self, layer, inputs, outputs, apply(layer.activation, constants[0]))


@dataclasses.dataclass(frozen=True)
class Elementwise(Compaction):
    """A layer that acts on each entry alone (`ReLU`, `LeakyReLU`, `ELU`):
    it maps a constant to the constant it computes."""

    def keeps_channels(self, layer) -> bool:
        return True

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        return _identity_link(self, layer, inputs, outputs, apply(layer, constants[0]))


@dataclasses.dataclass(frozen=True)
class Passthrough(Compaction):
    """A layer that leaves channels and their constants as they are at
    inference: dropout and noise (identity there), and pooling, cropping
    and upsampling (a constant image stays the same constant)."""

    def keeps_channels(self, layer) -> bool:
        return True

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        check_channels_last(layer)
        return _identity_link(self, layer, inputs, outputs, constants[0])


@dataclasses.dataclass(frozen=True)
class ZeroPadding(Compaction):
    """Zero padding: a channel stays constant only where its constant is
    the padding's 0."""

    def keeps_channels(self, layer) -> bool:
        return True

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        check_channels_last(layer)
        return _identity_link(self, layer, inputs, outputs, np.where(constants[0] == 0, 0.0, np.nan))


@dataclasses.dataclass(frozen=True)
class Reshape(Compaction):
    """`Flatten` and `Reshape`, which keep the flat (row-major) order,
    channels innermost. When one channel count divides the other, flat
    entry p is in input channel p % c_in and output channel p % c_out, and
    both sides agree on p % min(c_in, c_out): that residue is the unit that
    can go."""

    def plan(self, layer, inputs, outputs, constants):
        check_single(inputs, outputs)
        check_channels_last(layer)
        c_in, c_out = channels(inputs[0]), channels(outputs[0])
        small, big = sorted((c_in, c_out))
        if big % small:
            raise Unsupported(f"it maps {c_in} input channels onto {c_out}: neither divides the other")
        in_classes, out_classes = np.arange(c_in) % small, np.arange(c_out) % small
        # An output channel is constant when all the input channels it
        # gathers share one constant.
        rows = constants[0].reshape(-1, small)
        common = np.where(np.all(rows == rows[0], axis=0), rows[0], np.nan)
        plan = Plan(layer, "link", inputs, outputs, [in_classes, out_classes], compaction=self)
        return plan, [common[out_classes]], [None]

    def edit(self, layer, config, keep_in, keep_out, constants_in):
        if "target_shape" in config:  # Reshape's; Flatten has none
            target = list(config["target_shape"])
            if target[-1] != -1:
                target[-1] = int(keep_out.sum())
            config["target_shape"] = tuple(target)
        return None
