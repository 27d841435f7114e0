"""Dead attention heads: attention layers rebuilt with fewer heads.

A `MultiHeadAttention` has one `num_heads`, and its config names `key_dim`
and `value_dim` apart from it: a layer that keeps 5 of its 8 heads is rebuilt
from its config with `num_heads=5`, given the kept heads' slices of the
query, key and value kernels and biases (heads on the last but one axis) and
of the output kernel (heads first). A dead head's output-projection slice is
zero, so the layer computes exactly what it did.

KerasHub's `TransformerEncoder` and `TransformerDecoder` derive their heads'
width from theirs, `hidden_dim // num_heads`: their config cannot say "5
heads of 32". So `compact` writes such a layer out as its own sublayers
(`unroll`): a fresh copy of it is called on the graph's tensors with its
attention replaced by the smaller one, and its `call` leaves in the graph the
plain layers and `keras.ops` it is made of (attention, dropout, residual
sums, normalization, the feed-forward pair), named after the layer
(`transformer_layer_0_feedforward_intermediate_dense`). The model then saves
and loads as plain Keras and KerasHub layers, without keras_regkit.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_regkit import layers as layers_lib
from keras_regkit._keras import hub as hub_fence
from keras_regkit._keras.layers import sublayers
from keras_regkit.pruning import units as units_lib


def kept_heads(layer) -> np.ndarray:
    """Which heads of attention layer `layer` stay: the live ones, or the
    first head if every one is dead (a layer keeps one head)."""
    dead = units_lib.dead_mask(layer)
    return ~dead if (~dead).any() else np.arange(dead.size) == 0


def has_dead_heads(layer) -> bool:
    return units_lib.is_head_layer(layer) and layer.built and bool(units_lib.dead_mask(layer).any())


def smaller_config(layer) -> dict:
    """`layer`'s config with only its kept heads."""
    return {**layer.get_config(), "num_heads": int(kept_heads(layer).sum())}


def check_rebuildable(layer) -> None:
    """Refuses, before anything is built, attention layer `layer` (with dead
    heads) if `compact` cannot rebuild it with fewer heads: its class must
    take `num_heads` from its config, and every weight must be a part of a
    head or the output bias."""
    others = _unsliced_weights(layer)
    if others:  # e.g. a gated attention's gate, which this would not slice
        raise ValueError(
            f"compact: attention layer '{layer.name}' has weights besides its query, key, value and "
            f"output projections ({others}); removing its heads would not slice them: keep its heads alive.")
    config = smaller_config(layer)
    cls = type(layer).__name__
    try:
        rebuilt = type(layer).from_config(config)
        built_as = {name: getattr(rebuilt, name) for name in ("num_heads", "key_dim", "value_dim")}
    except Exception as error:  # noqa: BLE001 - any failure is the one reported
        # Keras' deserialization error quotes the whole config first: its last line says why.
        why = [line for line in str(error).splitlines() if line.strip()][-1:] or [""]
        problem = f"`{cls}.from_config` with num_heads={config['num_heads']} raised {type(error).__name__}: {why[0]}"
    else:
        wanted = {"num_heads": config["num_heads"], "key_dim": layer.key_dim, "value_dim": layer.value_dim}
        if built_as == wanted:
            return
        problem = f"`{cls}.from_config` with num_heads={config['num_heads']} built {built_as}, not {wanted}"
    raise ValueError(
        f"compact: cannot remove the dead heads of attention layer '{layer.name}' ({cls}): its config "
        f"does not let compact set `num_heads` ({problem}). Give `{cls}.__init__` a `num_heads` "
        "argument that it passes on to `MultiHeadAttention` (with `key_dim` and `value_dim`), or keep "
        "its heads alive.")


def _unsliced_weights(layer) -> list[str]:
    """The paths of `layer`'s weights that are in no head sublayer."""
    projections, output = units_lib.head_sublayers(layer)
    parts = projections + (output,)
    return [v.path for v in layer.weights if all(v is not w for sub in parts for w in sub.weights)]


def copy_heads(old, new) -> None:
    """`old`'s weights into `new`, an attention layer built with only
    `old`'s kept heads (checked by `check_rebuildable`): each head part
    sliced on its heads axis, the other weights (the output bias) as they
    are."""
    projections, output = units_lib.head_sublayers(old)
    parts = projections + (output,)
    keep = kept_heads(old)
    new_projections, new_output = units_lib.head_sublayers(new)
    for sub, new_sub in zip(parts, new_projections + (new_output,)):
        values = []
        for variable in sub.weights:
            value = np.asarray(ops.convert_to_numpy(variable))
            axis = units_lib.head_axis(sub, variable, old)
            values.append(value if axis is None else np.compress(keep, value, axis=axis))
        new_sub.set_weights(values)


def attention_sublayers(layer) -> dict[str, keras.layers.Layer]:
    """The attention layers a layer holds and `compact` unrolls it to
    shrink (KerasHub's transformer layers'), by attribute; `{}` for a
    layer whose registered kind names none."""
    found = layers_lib.kind_of(layer).attention
    if found is None:
        return {}
    return {name: sub for name, sub in found(layer).items() if units_lib.is_head_layer(sub)}


def needs_unrolling(layer) -> bool:
    """Whether `layer` holds attention layers with dead heads (a KerasHub
    transformer layer, whose config cannot say fewer heads of the same
    width)."""
    return any(has_dead_heads(sub) for sub in attention_sublayers(layer).values())


def unroll(old, config: dict, args, kwargs):
    """Calls KerasHub layer `old`, rebuilt from `config`, on the symbolic
    `args`/`kwargs` as its own sublayers, each attention with dead heads
    replaced by a smaller one. Returns its outputs and its new sublayers by
    the names of `old`'s."""
    fresh = type(old).from_config(config)
    fresh(*args, **kwargs)  # builds it; this call's node is not on the way to the outputs
    new_by_name = {sub.name: sub for sub in sublayers(fresh, recursive=False)}
    for attribute, old_attention in attention_sublayers(old).items():
        # Plain Keras attention, every one: KerasHub's cached kind cannot be
        # called on symbolic tensors with its `cache` arguments.
        config = smaller_config(old_attention) if has_dead_heads(old_attention) else old_attention.get_config()
        plain = keras.layers.MultiHeadAttention.from_config(config)
        # `fresh` only lends its `call`: the new attention replaces the
        # built one without being tracked by it.
        hub_fence.replace_attention(fresh, attribute, _WithoutCache(plain))
        new_by_name[old_attention.name] = plain
    hub_fence.use_traceable_self_attention_mask(fresh)
    for sub in new_by_name.values():
        sub.name = f"{old.name}_{sub.name}"  # unique in the model, and says where it came from
    return fresh.call(*args, **kwargs), new_by_name


class _WithoutCache:
    """Calls an attention layer as KerasHub's decoder calls its cached one,
    with `cache` and `cache_update_index`, which must be None here."""

    def __init__(self, attention):
        self.attention = attention

    def __call__(self, *args, cache=None, cache_update_index=None, **kwargs):
        if cache is not None or cache_update_index is not None:
            raise ValueError("compact: a transformer layer unrolled for fewer heads is called without a cache.")
        return self.attention(*args, **kwargs)
