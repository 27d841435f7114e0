"""The built-in entries of the layer registry: Keras' layers with units,
attention and the layers `compact` reasons through, and KerasHub's
transformer layers (registered once KerasHub is imported)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_regkit._keras import hub as hub_fence
from keras_regkit._keras import layers as layers_fence
from keras_regkit.layers import channels as ch
from keras_regkit.layers.compaction import ConvUnits, SeparableConvUnits, Units
from keras_regkit.layers.kinds import FeedForward, LayerKind, register, register_lazily

L = keras.layers

# Identity at inference; a channel's constant passes through unchanged.
_PASS = (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianDropout,
         L.GaussianNoise, L.AlphaDropout, L.ActivityRegularization, L.Identity)
# A constant image pools, crops and upsamples to the same constant.
_SPATIAL = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
)
# Layers that act on each input feature alone: a feature whose every
# outgoing weight after them is zero is unused before them too. (Not
# LayerNormalization: it mixes a feature into the others' normalisation.)
# The spatial dropouts are Dropouts.
_PER_FEATURE = (L.Activation, L.BatchNormalization, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                L.SpatialDropout3D, L.GaussianDropout, L.GaussianNoise, L.Normalization, L.Rescaling)

ENTRIES: dict[type, LayerKind] = {
    # Units: (unit kernel, trailing axes that index units).
    L.Dense: LayerKind(unit_kernel="kernel", compact=Units("units")),
    **{cls: LayerKind(unit_kernel="kernel", compact=ConvUnits()) for cls in (L.Conv1D, L.Conv2D, L.Conv3D)},
    # The output filters, through the pointwise kernel, which reads the
    # depthwise convolution's output, not the layer's inputs.
    **{cls: LayerKind(unit_kernel="pointwise_kernel", reads_inputs=False, compact=SeparableConvUnits())
       for cls in (L.SeparableConv1D, L.SeparableConv2D)},
    # (*window, channels, multiplier): output channel c * multiplier + m is
    # fed by kernel[..., c, m] alone.
    **{cls: LayerKind(unit_kernel="kernel", unit_axes=2, compact=ch.DepthwiseChannels())
       for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D)},
    # Heads (KerasHub's CachedMultiHeadAttention is a subclass).
    L.MultiHeadAttention: LayerKind(heads=layers_fence.attention_projections),
    # Layers compact links channels through.
    L.BatchNormalization: LayerKind(compact=ch.BatchNorm()),
    L.Activation: LayerKind(compact=ch.ActivationFunction()),
    **{cls: LayerKind(compact=ch.Elementwise()) for cls in (L.ReLU, L.LeakyReLU, L.ELU)},
    **{cls: LayerKind(compact=ch.Passthrough()) for cls in _PASS + _SPATIAL},
    **{cls: LayerKind(compact=ch.ZeroPadding()) for cls in (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)},
    **{cls: LayerKind(compact=ch.Reshape()) for cls in (L.Flatten, L.Reshape)},
    L.Add: LayerKind(compact=ch.Merge(np.sum)),
    L.Average: LayerKind(compact=ch.Merge(np.mean)),
    L.Multiply: LayerKind(compact=ch.Merge(np.prod)),
    L.Maximum: LayerKind(compact=ch.Merge(np.max)),
    L.Minimum: LayerKind(compact=ch.Merge(np.min)),
    L.Subtract: LayerKind(compact=ch.Merge(ch.difference)),
    L.Concatenate: LayerKind(compact=ch.Concatenation()),
    **{cls: LayerKind() for cls in (L.Normalization, L.Rescaling)},
}
ENTRIES = {cls: dataclasses.replace(kind, per_feature=cls in _PER_FEATURE) for cls, kind in ENTRIES.items()}


def _kerashub_entries() -> dict:
    """KerasHub's TransformerEncoder and TransformerDecoder: an attention
    layer (two for a decoder with cross-attention) that `compact` unrolls
    to remove heads, and a feed-forward block of `intermediate_dim` units."""
    from keras_hub.layers import TransformerDecoder, TransformerEncoder

    block = LayerKind(
        attention=hub_fence.attention_sublayers,
        feedforward=FeedForward("feedforward_intermediate_dense", "feedforward_output_dense", "intermediate_dim"),
    )
    return {TransformerEncoder: block, TransformerDecoder: block}


for _cls, _kind in ENTRIES.items():
    register(_cls, _kind)
register_lazily("keras_hub", _kerashub_entries)
