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
from keras_regkit.compacting import bypass
from keras_regkit.pruning import units as units_lib


def kept_heads(layer) -> np.ndarray:
    """Which heads of attention layer `layer` stay: the live ones. A layer
    whose every head is dead is bypassed instead (see `bypass`), unless its
    class has a `call` of its own: that one keeps its first head, so its
    `call` still runs."""
    live = ~units_lib.dead_mask(layer)
    return live if live.any() else np.arange(live.size) == 0


def has_dead_heads(layer) -> bool:
    return units_lib.is_head_layer(layer) and layer.built and bool(units_lib.dead_mask(layer).any())


def needs_rebuilding(layer) -> bool:
    """Whether `layer` is an attention layer to rebuild with fewer heads:
    some of its heads are dead, not all (one with none left is bypassed)."""
    return has_dead_heads(layer) and not bypass.all_heads_dead(layer)


def smaller_config(layer) -> dict:
    """`layer`'s config with only its kept heads."""
    return {**layer.get_config(), "num_heads": int(kept_heads(layer).sum())}


def check_rebuildable(layer) -> None:
    """Refuses, before anything is built, attention layer `layer` (with dead
    heads) if `compact` cannot rebuild it with fewer heads: its class must
    take `num_heads` from its config, and every weight must be a part of a
    head or the output bias."""
    others = _unsliced_weights(layer)
    if others:
        raise ValueError(
            f"compact: attention layer '{layer.name}' has weights besides its query, key, value, gate and "
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


def _head_parts(layer) -> tuple:
    """The sublayers of attention layer `layer` with one slice per head:
    query, key, value, the gate of a gated attention (`use_gate=True`, laid
    out as the query), and the output projection last."""
    projections, output = units_lib.head_sublayers(layer)
    gates = ()
    if layer.get_config().get("use_gate"):
        gates = tuple(sub for sub in sublayers(layer, recursive=False)
                      if sub.name == "gate" and isinstance(sub, keras.layers.EinsumDense))
    return projections + gates + (output,)


def _unsliced_weights(layer) -> list[str]:
    """The paths of `layer`'s weights that are in no head sublayer."""
    parts = _head_parts(layer)
    return [v.path for v in layer.weights if all(v is not w for sub in parts for w in sub.weights)]


def _head_axis(sub, variable, layer) -> int | None:
    """The heads axis of `variable` (of `sub`, a head part of `layer`), or
    None for the output bias."""
    axis = units_lib.head_axis(sub, variable, layer)
    if axis is None and sub.name == "gate" and variable.path.endswith(("kernel", "bias")):
        return len(variable.shape) - 2  # the gate is laid out as the query
    return axis


def copy_heads(old, new) -> None:
    """`old`'s weights into `new`, an attention layer built with only
    `old`'s kept heads (checked by `check_rebuildable`): each head part
    sliced on its heads axis, the other weights (the output bias) as they
    are."""
    keep = kept_heads(old)
    for sub, new_sub in zip(_head_parts(old), _head_parts(new)):
        values = []
        for variable in sub.weights:
            value = np.asarray(ops.convert_to_numpy(variable))
            axis = _head_axis(sub, variable, old)
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
    return (any(has_dead_heads(sub) for sub in attention_sublayers(layer).values())
            or feedforward_bypassed(layer))


def feedforward_bypassed(layer) -> bool:
    """Whether `layer` (a KerasHub transformer layer) has a feed-forward
    pair whose intermediate units are all dead: it is written out with the
    pair's constant in its place."""
    pair = feedforward_pair(layer)
    return pair is not None and bool(units_lib.dead_mask(pair[0]).all())


def feedforward_pair(layer):
    """The (intermediate, output) Dense pair of `layer`'s feed-forward block,
    by its registered kind's names, or None."""
    spec = layers_lib.kind_of(layer).feedforward
    if spec is None or isinstance(layer, keras.Model):
        return None
    found = {sub.name: sub for sub in sublayers(layer, recursive=False) if isinstance(sub, keras.layers.Dense)}
    inner, outer = found.get(spec.inner), found.get(spec.outer)
    return (inner, outer) if inner is not None and outer is not None else None


def unroll(old, config: dict, args, kwargs):
    """Calls KerasHub layer `old`, rebuilt from `config`, on the symbolic
    `args`/`kwargs` as its own sublayers, each attention with dead heads
    replaced by a smaller one, each with every head dead and a feed-forward
    pair with every unit dead by their constant (see `bypass`). Returns its
    outputs and its new sublayers by the names of `old`'s (those in the
    graph). Raises `ValueError` if `old` is called with a cache."""
    if any(kwargs.get(name) is not None for name in ("self_attention_cache", "cross_attention_cache")):
        raise ValueError(bypass.cache_refusal(old.name))
    fresh = type(old).from_config(config)
    fresh(*args, **kwargs)  # builds it; this call's node is not on the way to the outputs
    new_by_name = {sub.name: sub for sub in sublayers(fresh, recursive=False)}
    if feedforward_bypassed(old):
        constant = bypass.ConstantFeedForward(*feedforward_pair(old))
        hub_fence.replace_feedforward(fresh, constant.inner, constant.outer)
        for sub in feedforward_pair(old):
            del new_by_name[sub.name]
    for attribute, old_attention in attention_sublayers(old).items():
        if bypass.all_heads_dead(old_attention):
            hub_fence.replace_attention(fresh, attribute, bypass.ConstantAttention(old_attention, old.name))
            del new_by_name[old_attention.name]
            continue
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
        if cache is not None or cache_update_index is not None:  # refused before, in `unroll`
            raise ValueError("compact: a transformer layer unrolled for fewer heads is called without a cache.")
        return self.attention(*args, **kwargs)
