"""Dead units of the feed-forward blocks inside transformer layers.

KerasHub's `TransformerEncoder` and `TransformerDecoder` hold their
feed-forward block as two Dense sublayers, `feedforward_intermediate_dense`
(hidden -> `intermediate_dim`, with the activation) and
`feedforward_output_dense` (back to hidden), built from the layer's own
`intermediate_dim` argument (the `FeedForward` of their registered kind,
see `keras_regkit.layers`). An intermediate unit whose kernel column is all
zeros outputs the constant `activation(bias)`, so it can go: the layer is
rebuilt with a smaller `intermediate_dim`, the first kernel's columns and the
second's rows sliced, and each constant folded into the second's bias.

Such layers sit inside subclassed functional models (KerasHub backbones),
which `compact` cannot rebuild from their config: `flatten` re-traces the
whole graph as a plain Functional model (`keras.models.clone_model(...,
recursive=True)`) with the smaller layers in place, and `compact` goes on
from there. Attention layers with dead heads are rebuilt in the same pass
(see `attention`).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit import layers as layers_lib
from keras_regkit._keras import graph as graph_fence
from keras_regkit._keras.layers import sublayers
from keras_regkit.compacting import attention, bypass
from keras_regkit.layers.graph import Graph, as_functional
from keras_regkit.pruning import units as units_lib
from keras_regkit.pruning.units import dead_mask


def block(layer) -> tuple[keras.layers.Dense, keras.layers.Dense] | None:
    """The (intermediate, output) Dense pair of a layer whose registered
    kind has a feed-forward block (KerasHub's transformer layers) and whose
    config sets its width, or None for any other layer."""
    spec = layers_lib.kind_of(layer).feedforward
    if spec is None or isinstance(layer, keras.Model) or spec.argument not in _config(layer):
        return None
    return attention.feedforward_pair(layer)


def _config(layer) -> dict:
    try:
        return type(layer).get_config(layer)
    except NotImplementedError:
        return {}


def needs_flattening(model: keras.Model) -> bool:
    """Whether `model` has a transformer layer with dead feed-forward units,
    an attention layer with dead heads, or is or holds a subclassed
    functional model (a KerasHub backbone) that only a re-traced graph lets
    `compact` edit; or, in a Functional model, a `Dense` that reads only a
    `Dense` whose every unit is dead (see `bypass`)."""
    return _needs_rewrite(model) or _bypassable_dense(model)


def _needs_rewrite(model) -> bool:
    for layer in sublayers(model, recursive=True, include_self=True):
        pair = block(layer)
        if pair is not None and dead_mask(pair[0]).any():
            return True
        if attention.has_dead_heads(layer):
            return True
        if graph_fence.is_functional(layer) and not graph_fence.is_plain_functional(layer):
            return True
    return False


def _bypassable_dense(model) -> bool:
    """Whether Functional `model` calls a hidden `Dense` on the output of a
    `Dense` whose every unit is dead (neither producing the outputs)."""
    graph = None if type(model) is keras.Sequential else Graph.of(model)
    if graph is None:
        return False
    outputs = units_lib.output_layers(model) or []
    hidden = [call for call in graph.calls
              if bypass.all_units_dead(call.layer) and all(call.layer is not out for out in outputs)]
    return any(type(reader.layer) is keras.layers.Dense and all(reader.layer is not out for out in outputs)
               for call in hidden for tensor in call.outputs for reader in graph.readers(tensor))


def flatten(model: keras.Model):
    """A plain Functional copy of `model`, with the same weights, in which
    every transformer layer with dead feed-forward units is rebuilt without
    them and every attention layer with dead heads with fewer heads (a
    KerasHub transformer layer with dead heads is written out as its
    sublayers: see `attention.unroll`). An attention layer whose every head
    is dead, a feed-forward pair whose every unit is dead and a hidden
    `Dense` that reads only such a constant are written as their constant
    (see `bypass`). Returns the copy and, per block or layer (by its path),
    `(units before, units after)` and the dead units before. Raises
    `ValueError` (see `attention.check_rebuildable`) for an attention layer
    with dead heads that cannot be rebuilt with fewer, or when a layer to
    write out is called with a key/value cache."""
    for layer in sublayers(model, recursive=True, include_self=True):
        if attention.needs_rebuilding(layer):
            attention.check_rebuildable(layer)  # before anything is built
    old_by_new, units, dead, unrolled = {}, {}, {}, []
    # id of a new tensor -> (the feature vector it holds at every position, a
    # tensor upstream with the same positions)
    constants = {}
    outputs = units_lib.output_layers(model) or []

    def count(name, mask):
        units[name], dead[name] = (int(mask.size), int((~mask).sum())), int(mask.sum())

    def rebuild(layer):
        config = layer.get_config()
        pair = block(layer)
        if pair is not None:
            mask = dead_mask(pair[0])
            spec = layers_lib.kind_of(layer).feedforward
            count(f"{layer.name}/{spec.inner}", mask)
            # A bypassed pair's width does not matter: `unroll` never calls it.
            config = {**config, spec.argument: max(int((~mask).sum()), 1)}
            for sub in attention.attention_sublayers(layer).values():
                if attention.has_dead_heads(sub):
                    count(f"{layer.name}/{sub.name}", dead_mask(sub))
        elif attention.has_dead_heads(layer):
            count(layer.name, dead_mask(layer))
            if attention.needs_rebuilding(layer):
                config = attention.smaller_config(layer)
        new = type(layer).from_config(config)
        old_by_new[id(new)] = layer
        return new

    def call(new, *args, **kwargs):
        old = old_by_new.get(id(new))
        if old is not None and bypass.all_heads_dead(old):
            query = args[0] if args else kwargs.pop("query")
            return bypass.ConstantAttention(old, old.name)(query, *args[1:], **kwargs)
        if old is not None and _reads_constant(old, args, kwargs, constants, outputs):
            value, source = constants[id(args[0])]
            value = bypass.dense_constant(old, value)
            units[old.name], dead[old.name] = (int(dead_mask(old).size), 0), int(dead_mask(old).sum())
            return _constant(source, value, constants)
        if old is None or not attention.needs_unrolling(old):
            result = new(*args, **kwargs)
            if (old is not None and bypass.all_units_dead(old) and all(old is not out for out in outputs)
                    and len(args) == 1):
                # Its readers' constants are built on its input: it then leaves the graph.
                constants[id(result)] = (bypass.dead_dense_constant(old), args[0])
            return result
        result, new_by_name = attention.unroll(old, new.get_config(), args, kwargs)
        unrolled.append((old, new_by_name))
        return result

    flat = keras.models.clone_model(as_functional(model), clone_function=rebuild, call_function=call,
                                    recursive=True)
    kept = {id(layer) for layer in sublayers(flat, recursive=True)}
    for new_id, old in old_by_new.items():
        if new_id not in kept and bypass.all_units_dead(old):  # every reader bypassed
            count(old.name, dead_mask(old))
    for new in sublayers(flat, recursive=True):
        old = old_by_new.get(id(new))
        if old is None:
            continue
        if attention.needs_rebuilding(old):
            attention.copy_heads(old, new)
        elif block(old) is not None:
            _transplant(old, {s.name: s for s in sublayers(new, recursive=False)})
        else:
            new.set_weights(old.get_weights())
    for old, new_by_name in unrolled:
        _transplant(old, new_by_name)
    return flat, units, dead


def _reads_constant(layer, args, kwargs, constants, outputs) -> bool:
    """Whether plain `Dense` `layer`, not a model output, is called on a
    tensor that holds one constant feature vector at every position."""
    return (type(layer) is keras.layers.Dense and len(args) == 1 and not kwargs and id(args[0]) in constants
            and layer.quantization_mode is None and not getattr(layer, "lora_enabled", False)
            and all(layer is not out for out in outputs))


def _constant(source, value, constants):
    result = bypass.constant_like(source, value)
    constants[id(result)] = (value, source)
    return result


def _transplant(old, new_by_name) -> None:
    """`old`'s weights into its rebuilt sublayers (`new_by_name`: by the
    names of `old`'s): the feed-forward pair without its dead intermediate
    units, their constant output folded into the output layer's bias; the
    attention without its dead heads; every other sublayer as it is."""
    inner, outer = block(old)
    for sub in sublayers(old, recursive=False):
        new = new_by_name.get(sub.name)
        if new is None:  # bypassed: see `attention.unroll`
            continue
        if sub is inner:
            _copy_feedforward(old.name, inner, outer, new, new_by_name[outer.name])
        elif attention.needs_rebuilding(sub):
            attention.copy_heads(sub, new)
        elif sub is not outer:
            new.set_weights(sub.get_weights())


def _copy_feedforward(name, inner, outer, new_inner, new_outer) -> None:
    mask = dead_mask(inner)
    keep = ~mask  # a pair with every unit dead is bypassed instead
    w1 = keras.ops.convert_to_numpy(inner.kernel)
    b1 = keras.ops.convert_to_numpy(inner.bias) if inner.use_bias else np.zeros(mask.size, w1.dtype)
    w2 = keras.ops.convert_to_numpy(outer.kernel)
    b2 = keras.ops.convert_to_numpy(outer.bias) if outer.use_bias else np.zeros(w2.shape[-1], w2.dtype)
    # A dead unit's output, activation(bias), reaches the output layer as a
    # constant: add its share to that layer's bias.
    constant = bypass.dead_dense_constant(inner)
    folded = b2 + (constant * ~keep) @ w2
    new_inner.set_weights([w1[..., keep]] + ([b1[keep]] if inner.use_bias else []))
    if not outer.use_bias and (folded != 0).any():
        raise ValueError(f"compact: '{name}/{outer.name}' has no bias to fold the dead units' constant into.")
    new_outer.set_weights([w2[keep]] + ([folded] if outer.use_bias else []))
