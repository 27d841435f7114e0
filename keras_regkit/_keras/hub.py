"""Private reads of KerasHub: the attention layers inside its transformer
layers, and a decoder's self-attention mask made traceable."""

from __future__ import annotations

from keras import ops

from keras_regkit._keras import moved

# Where KerasHub's TransformerEncoder/TransformerDecoder keep their
# attention layers (the decoder's cross-attention only once it is built
# with an encoder sequence).
SELF_ATTENTION, CROSS_ATTENTION = "_self_attention_layer", "_cross_attention_layer"
# Where they keep their feed-forward pair (intermediate, output).
FEEDFORWARD = ("_feedforward_intermediate_dense", "_feedforward_output_dense")


def attention_sublayers(layer) -> dict:
    """A built KerasHub transformer layer's attention layers, by attribute
    (those it has: an encoder has no cross-attention)."""
    if layer.built and getattr(layer, SELF_ATTENTION, None) is None:
        raise moved("keras_hub", f"{type(layer).__name__}.{SELF_ATTENTION}")
    found = {name: getattr(layer, name, None) for name in (SELF_ATTENTION, CROSS_ATTENTION)}
    return {name: sub for name, sub in found.items() if sub is not None}


def replace_attention(layer, attribute: str, attention) -> None:
    """Makes `layer.call` use `attention` for the attention layer at
    `attribute` (a key of `attention_sublayers`), without `layer` tracking
    it: `layer` only lends its `call`."""
    if not hasattr(layer, attribute):
        raise moved("keras_hub", f"{type(layer).__name__}.{attribute}")
    object.__setattr__(layer, attribute, attention)


def replace_feedforward(layer, inner, outer) -> None:
    """Makes `layer.call` use the callables `inner` and `outer` for its
    feed-forward pair, without `layer` tracking them."""
    for attribute, replacement in zip(FEEDFORWARD, (inner, outer)):
        replace_attention(layer, attribute, replacement)


def use_traceable_self_attention_mask(layer) -> None:
    """Makes a `TransformerDecoder` build its self-attention mask from ops
    that a graph with an unknown batch size can hold (no effect on an
    encoder, which has no such mask)."""
    if hasattr(layer, "_compute_self_attention_mask"):
        object.__setattr__(layer, "_compute_self_attention_mask", traceable_self_attention_mask)
    elif _is_decoder(layer):
        raise moved("keras_hub", "TransformerDecoder._compute_self_attention_mask")


def _is_decoder(layer) -> bool:
    from keras_hub.layers import TransformerDecoder

    return isinstance(layer, TransformerDecoder)


def traceable_self_attention_mask(decoder_sequence, decoder_padding_mask, decoder_attention_mask,
                                  use_causal_mask, self_attention_cache, self_attention_cache_update_index):
    """TransformerDecoder's self-attention mask, from ops that a graph with
    an unknown batch size can hold (KerasHub's broadcasts to the batch size,
    which a symbolic tensor does not know). Without a cache: `compact`'s
    models see whole sequences."""
    try:
        from keras_hub.src.layers.modeling.transformer_layer_utils import merge_padding_and_attention_mask
    except ImportError as error:
        raise moved("keras_hub", "keras_hub.src.layers.modeling.transformer_layer_utils", error) from None

    if self_attention_cache is not None:
        raise ValueError("compact: a decoder unrolled for fewer heads is called without a cache.")
    mask = merge_padding_and_attention_mask(decoder_sequence, decoder_padding_mask, decoder_attention_mask)
    if not use_causal_mask:
        return mask
    # Position i (from 1) of every sequence, (batch, length, 1): query i sees key j <= i.
    position = ops.cumsum(ops.ones_like(ops.sum(decoder_sequence, axis=-1, keepdims=True), dtype="int32"), axis=1)
    causal = ops.cast(ops.greater_equal(position, ops.transpose(position, (0, 2, 1))), "int32")
    return causal if mask is None else ops.minimum(ops.cast(mask, "int32"), causal)
