"""Dead units of the feed-forward blocks inside transformer layers.

KerasHub's `TransformerEncoder` and `TransformerDecoder` hold their
feed-forward block as two Dense sublayers, `feedforward_intermediate_dense`
(hidden -> `intermediate_dim`, with the activation) and
`feedforward_output_dense` (back to hidden), built from the layer's own
`intermediate_dim` argument. An intermediate unit whose kernel column is all
zeros outputs the constant `activation(bias)`, so it can go: the layer is
rebuilt with a smaller `intermediate_dim`, the first kernel's columns and the
second's rows sliced, and each constant folded into the second's bias.

Such layers sit inside subclassed functional models (KerasHub backbones),
which `compact` cannot rebuild from their config: `flatten` re-traces the
whole graph as a plain Functional model (`keras.models.clone_model(...,
recursive=True)`) with the smaller layers in place, and `compact` goes on
from there.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit.pruning.units import dead_mask

INNER, OUTER = "feedforward_intermediate_dense", "feedforward_output_dense"

try:  # Keras 3 builds `keras.Model(inputs, outputs)` as this class.
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - a Keras that moved it
    _Functional = None


def _sublayer(layer, name):
    found = [s for s in layer._flatten_layers(include_self=False, recursive=False) if s.name == name]
    return found[0] if len(found) == 1 and isinstance(found[0], keras.layers.Dense) else None


def block(layer) -> tuple[keras.layers.Dense, keras.layers.Dense] | None:
    """The (intermediate, output) Dense pair of a transformer layer whose
    config sets `intermediate_dim`, or None for any other layer."""
    if isinstance(layer, (keras.Model, keras.layers.Dense)) or "intermediate_dim" not in _config(layer):
        return None
    inner, outer = _sublayer(layer, INNER), _sublayer(layer, OUTER)
    return (inner, outer) if inner is not None and outer is not None else None


def _config(layer) -> dict:
    try:
        return type(layer).get_config(layer)
    except NotImplementedError:
        return {}


def needs_flattening(model: keras.Model) -> bool:
    """Whether `model` has a transformer layer with dead feed-forward units,
    or is or holds a subclassed functional model (a KerasHub backbone) that only
    a re-traced graph lets `compact` edit."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        pair = block(layer)
        if pair is not None and dead_mask(pair[0]).any():
            return True
        if (isinstance(layer, keras.Model) and _Functional is not None
                and isinstance(layer, _Functional) and type(layer) is not _Functional):
            return True
    return False


def flatten(model: keras.Model):
    """A plain Functional copy of `model`, with the same weights, in which
    every transformer layer with dead feed-forward units is rebuilt without
    them. Returns the copy and, per such block (by its path), `(units
    before, units after)` and the dead units before."""
    old_by_new, units, dead = {}, {}, {}

    def rebuild(layer):
        config = layer.get_config()
        pair = block(layer)
        if pair is not None:
            mask = dead_mask(pair[0])
            name = f"{layer.name}/{INNER}"
            units[name], dead[name] = (int(mask.size), int((~mask).sum())), int(mask.sum())
            config = {**config, "intermediate_dim": max(int((~mask).sum()), 1)}
        new = type(layer).from_config(config)
        old_by_new[id(new)] = layer
        return new

    flat = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
    for new in flat._flatten_layers(include_self=False, recursive=True):
        old = old_by_new.get(id(new))
        if old is None:
            continue
        pair = block(old)
        if pair is None or not dead_mask(pair[0]).any():
            new.set_weights(old.get_weights())
        else:
            _copy_block(old, new, pair)
    return flat, units, dead


def _copy_block(old, new, pair) -> None:
    """`old`'s weights into the smaller `new`: every sublayer as it is but
    the feed-forward pair, whose dead intermediate units go, their constant
    output folded into the output layer's bias."""
    inner, outer = pair
    mask = dead_mask(inner)
    keep = ~mask if (~mask).any() else np.arange(mask.size) == np.argmin(mask)  # keep one unit
    new_inner, new_outer = block(new)
    w1 = keras.ops.convert_to_numpy(inner.kernel)
    b1 = keras.ops.convert_to_numpy(inner.bias) if inner.use_bias else np.zeros(mask.size, w1.dtype)
    w2 = keras.ops.convert_to_numpy(outer.kernel)
    b2 = keras.ops.convert_to_numpy(outer.bias) if outer.use_bias else np.zeros(w2.shape[-1], w2.dtype)
    # A dead unit's output, activation(bias), reaches the output layer as a
    # constant: add its share to that layer's bias.
    constant = keras.ops.convert_to_numpy(inner.activation(keras.ops.convert_to_tensor(b1)))
    folded = b2 + (constant * ~keep) @ w2
    for sub in old._flatten_layers(include_self=False, recursive=False):
        if sub is inner or sub is outer:
            continue
        target = [s for s in new._flatten_layers(include_self=False, recursive=False) if s.name == sub.name]
        target[0].set_weights(sub.get_weights())
    new_inner.set_weights([w1[..., keep]] + ([b1[keep]] if inner.use_bias else []))
    if not outer.use_bias and (folded != 0).any():
        raise ValueError(f"compact: '{old.name}/{OUTER}' has no bias to fold the dead units' constant into.")
    new_outer.set_weights([w2[keep]] + ([folded] if outer.use_bias else []))
