"""Sublayers with nothing left, written as the constant they compute.

An attention layer whose every head is dead multiplies whatever it attends
to by zero: it outputs its output projection's bias (zero without one) at
every position. A feed-forward pair whose intermediate units are all dead
outputs `activation(b1) @ W2 + b2` at every position, and so does a plain
`Dense` that reads only the constant output of a `Dense` whose units are all
dead. `compact` writes such a sublayer as that constant, broadcast over its
input's positions (`keras.ops` in the graph, which save and load as plain
Keras): a residual block adds it to its residual stream, and a block without
a residual outputs it alone, exactly as before.

So a transformer block whose attention and feed-forward are both empty and
whose two output biases are zero adds zeros to its residual stream: a
pre-norm block is exactly the identity, a post-norm block exactly its two
layer norms.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
from keras import ops

from keras_regkit.pruning import units as units_lib


def all_heads_dead(layer) -> bool:
    """Whether `layer` is a built attention layer whose every head is dead
    and whose `call` is Keras' or KerasHub's own (it then outputs the
    constant)."""
    if not (units_lib.is_head_layer(layer) and layer.built and computes_plain_attention(layer)):
        return False
    return bool(units_lib.dead_mask(layer).all())


def computes_plain_attention(layer) -> bool:
    """Whether attention layer `layer`'s class computes what Keras'
    `MultiHeadAttention` (or KerasHub's cached one, which only adds the
    cache) computes: a subclass with a `call` of its own may do more with the
    attention's output than the constant would."""
    calls = {keras.layers.MultiHeadAttention.call}
    hub = sys.modules.get("keras_hub")  # a KerasHub layer means it is imported
    cached = getattr(getattr(hub, "layers", None), "CachedMultiHeadAttention", None)
    if cached is not None:
        calls.add(cached.call)
    return type(layer).call in calls


def attention_constant(layer) -> np.ndarray:
    """What attention layer `layer`, every head dead, outputs at each
    position: its output projection's bias (zeros without one), shaped as
    the output's trailing axes."""
    output = units_lib.head_sublayers(layer)[1]
    shape = tuple(output.kernel.shape[2:])  # (heads, head_dim, *output_shape)
    bias = getattr(output, "bias", None)
    value = np.zeros(shape, "float32") if bias is None else ops.convert_to_numpy(bias)
    return np.asarray(value).reshape(shape)


def dense_constant(layer, inputs: np.ndarray) -> np.ndarray:
    """What `keras.layers.Dense` `layer` outputs for the constant feature
    vector `inputs` (its activation included)."""
    value = inputs @ ops.convert_to_numpy(layer.kernel)
    if layer.use_bias:
        value = value + ops.convert_to_numpy(layer.bias)
    return np.asarray(ops.convert_to_numpy(layer.activation(ops.convert_to_tensor(value))))


def all_units_dead(layer) -> bool:
    """Whether `layer` is a built plain `keras.layers.Dense` (no LoRA, not
    quantized) whose every unit is dead: it outputs `activation(bias)`."""
    if type(layer) is not keras.layers.Dense or not layer.built or layer.quantization_mode is not None:
        return False
    return not getattr(layer, "lora_enabled", False) and bool(units_lib.dead_mask(layer).all())


def dead_dense_constant(layer) -> np.ndarray:
    """`activation(bias)`: what a `Dense` whose every unit is dead outputs."""
    units = int(layer.kernel.shape[-1])
    return dense_constant(layer, np.zeros(int(layer.kernel.shape[0]), "float32")) if units else np.zeros(0)


def feedforward_constant(inner, outer) -> np.ndarray:
    """What a feed-forward pair (Dense `inner` then Dense `outer`) whose
    intermediate units are all dead outputs at each position."""
    return dense_constant(outer, dead_dense_constant(inner))


def constant_like(tensor, value: np.ndarray):
    """`value` (the trailing axes of the result) at every position of
    `tensor` (all its axes but the last), in `tensor`'s dtype."""
    value = np.asarray(value)
    ones = ops.ones_like(tensor[..., :1])
    for _ in range(value.ndim - 1):
        ones = ops.expand_dims(ones, -1)
    # A product, not a sum: TensorFlow's `ops.add` takes a vector whose
    # length is the tensor's axis 1 for a channels-first bias and adds it
    # along that axis (a sequence as long as the hidden size).
    return ops.multiply(ones, value.astype(keras.backend.standardize_dtype(tensor.dtype)))


class ConstantAttention:
    """Stands in for attention layer `layer`, every head dead, in a call:
    returns its constant at each position of the query. `name` says where
    it is, for the refusals."""

    def __init__(self, layer, name):
        self.value, self.name = attention_constant(layer), name

    def __call__(self, query, *args, cache=None, cache_update_index=None, return_attention_scores=False,
                 **kwargs):
        if cache is not None or cache_update_index is not None:
            raise ValueError(cache_refusal(self.name))
        if return_attention_scores:
            raise ValueError(
                f"compact: attention layer '{self.name}' has every head dead and is called with "
                "`return_attention_scores=True`: there are no heads left to score. Keep one of its heads "
                "alive, or call it without attention scores.")
        return constant_like(query, self.value)


class ConstantFeedForward:
    """Stands in for a feed-forward pair whose intermediate units are all
    dead: `inner` passes its input on, `outer` returns the constant."""

    def __init__(self, inner, outer):
        value = feedforward_constant(inner, outer)
        self.inner = lambda inputs: inputs
        self.outer = lambda inputs: constant_like(inputs, value)


def cache_refusal(name) -> str:
    return (
        f"compact: transformer layer '{name}' is called with a key/value cache "
        "(`self_attention_cache` or `cross_attention_cache`), whose heads axis removing heads would change: "
        "the compacted layer could not read or write the same cache. Compact the model without the cache "
        "(e.g. the backbone, which sees whole sequences), or keep the layer's heads alive.")
