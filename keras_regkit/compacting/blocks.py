"""Removed blocks (see `keras_regkit.pruning.blocks`) taken out of the graph.

A removed block adds exactly 0 to its stream, so `compact` re-traces the
model (`keras.models.clone_model(..., recursive=True)`, as for dead
feed-forward units) with each removed block's call replaced by what it
computes: the stream itself for a plain residual block (its branch drops out)
and for a pre-norm transformer layer; the stream through copies of its layer
norms, named `<layer>_<norm>`, for a post-norm one (BERT's), whose norms act
on `x` even when both sublayers add 0. A KerasHub backbone thereby becomes a
plain Functional model with fewer transformer layers, of plain Keras and
KerasHub layers: it loads without keras_regkit.
"""

from __future__ import annotations

import keras

from keras_regkit._keras.layers import sublayers
from keras_regkit.layers.graph import as_functional
from keras_regkit.pruning import blocks as blocks_lib


def removed_blocks(model: keras.Model) -> list:
    """The removed blocks of `model` (none where it has no block)."""
    try:
        found = blocks_lib.find(model, same_width=False)
    except ValueError:
        return []  # no block, or blocks that cannot be removed: nothing to bypass
    return [block for block in found if blocks_lib.is_removed(block)]


def bypass(model: keras.Model):
    """A copy of `model` without its removed blocks, and their paths (the
    model itself and `[]` when it has none)."""
    removed = {id(block.layer): block for block in removed_blocks(model)}
    if not removed:
        return model, []
    old_by_new, norm_copies = {}, []
    norms_of = {}  # id(block layer) -> its norm copies, made once: a layer called twice shares them

    def rebuild(layer):
        new = type(layer).from_config(layer.get_config())
        old_by_new[id(new)] = layer
        return new

    def call(new, *args, **kwargs):
        block = removed.get(id(old_by_new.get(id(new))))
        if block is None:
            return new(*args, **kwargs)
        if id(block.layer) not in norms_of:
            norms = norms_of[id(block.layer)] = {}
            for sub in sublayers(block.layer, recursive=False):
                if sub.name in blocks_lib.POST_NORMS:
                    config = {**sub.get_config(), "name": f"{block.layer.name}_{sub.name}"}
                    norms[sub.name] = type(sub).from_config(config)
                    norm_copies.append((sub, norms[sub.name]))
        return blocks_lib.removed_output(block, args[0], norms_of[id(block.layer)])

    flat = keras.models.clone_model(as_functional(model), clone_function=rebuild, call_function=call,
                                    recursive=True)
    for new in sublayers(flat, recursive=True):
        old = old_by_new.get(id(new))
        if old is not None:
            new.set_weights(old.get_weights())
    for old, new in norm_copies:
        if new.built:
            new.set_weights(old.get_weights())
    return flat, [block.path for block in removed.values()]
