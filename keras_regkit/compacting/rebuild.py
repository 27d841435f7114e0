"""Physically removes dead units and filters, so a shrunk model is smaller
and faster, not just sparser.

A unit (a Dense output unit, a Conv filter) is *dead* when every kernel weight
that feeds it is exactly zero. Its output is then the same constant
`activation(bias)` at every position (for a Conv too: a zero kernel gives 0
at the padded borders as well). `compact` rebuilds the model from its config
without those units and folds each constant into the layers that consume it,
so the outputs stay the same at inference (dropout and noise layers, which
act only in training, would see fewer channels there). Which channels go is
worked out in `analysis`; how each layer is sliced is its registered kind's
(`keras_regkit.layers`).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit._keras import graph as graph_fence
from keras_regkit.compacting import blocks
from keras_regkit.compacting import feedforward
from keras_regkit.compacting.analysis import Analysis
from keras_regkit.compacting.result import CompactResult
from keras_regkit.layers.graph import Graph, reserve_names
from keras_regkit.pruning.units import dead_mask


def _strip_regkit(config):
    """Drops keras_regkit regularizers and constraints from a config, in
    place: they act only in training, and the new model must load where
    keras_regkit is not installed."""
    if isinstance(config, dict):
        for key, value in config.items():
            if (
                key.endswith(("_regularizer", "_constraint"))
                and isinstance(value, dict)
                and (
                    str(value.get("module", "")).startswith("keras_regkit")
                    or str(value.get("registered_name", "")).startswith("keras_regkit>")
                )
            ):
                config[key] = None
            else:
                _strip_regkit(value)
    elif isinstance(config, list):
        for value in config:
            _strip_regkit(value)


def _edit(plan, analysis, entry):
    """Changes one layer's config entry, in place, to its new channels and
    returns its new weights."""
    # Built from the graph's new shapes, not the saved ones.
    entry.pop("build_config", None)
    keep_in = ~analysis.removable[id(plan.inputs[0])]
    keep_out = ~analysis.removable[id(plan.outputs[0])]
    constants_in = np.nan_to_num(analysis.const[id(plan.inputs[0])])
    return plan.compaction.edit(plan.layer, entry["config"], keep_in, keep_out, constants_in)


def _report(analysis):
    """Units before and after, dead units and why dead ones were kept, for
    every layer with units."""
    units, dead, kept = {}, {}, {}
    for name, plan in analysis.plans.items():
        if not isinstance(plan.layer, keras.layers.Layer):
            continue
        mask = dead_mask(plan.layer)
        if mask is None:
            continue
        if plan.kind == "skip":
            gone, reasons = np.zeros(mask.shape, bool), [analysis.skipped[name]]
        else:
            gone = analysis.removable[id(plan.outputs[0])]
            reasons = analysis.why[id(plan.outputs[0])][mask & ~gone]
        units[name] = (int(mask.size), int(mask.size - gone.sum()))
        dead[name] = int(mask.sum())
        n_kept = int((mask & ~gone).sum())
        if n_kept:
            kept[name] = f"{n_kept} dead kept: " + "; ".join(dict.fromkeys(r for r in reasons if r))
    return units, dead, kept


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value for argument `model`: expected a built keras.Model "
            "(Sequential or Functional). Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if type(model) is keras.Sequential:
        if graph_fence.sequential_graph(model) is None:
            raise ValueError(
                "Invalid value for argument `model`: expected a built "
                f"keras.Model. Received: Sequential model '{model.name}' with "
                "no known input shape; start it with `keras.Input(shape)` or "
                "call `model.build(input_shape)` first."
            )
    elif not graph_fence.is_plain_functional(model):
        raise ValueError(
            "Invalid value for argument `model`: expected a keras.Sequential "
            "or a Functional `keras.Model(inputs, outputs)`, which compact "
            "rebuilds from their config. Received: model "
            f"'{model.name}' of type {type(model).__name__} (subclassed "
            "models have no graph to edit)."
        )


def compact(model: keras.Model, custom_objects: dict | None = None) -> CompactResult:
    """Returns a smaller copy of `model` with its dead units and filters
    removed, computing the same outputs.

    A unit is dead when all the kernel weights that feed it are exactly zero
    (see `dead_units`); its output is the constant `activation(bias)`. The
    unit is removed, the consumers' input weights are sliced to match, and
    the constant is folded into their biases through BatchNormalization,
    elementwise activations, dropout, pooling, Flatten/Reshape,
    DepthwiseConv, Add/Subtract/Multiply/Average/Maximum/Minimum (a channel
    goes only if it is dead in every branch) and Concatenate (channels keep
    their offsets). A consumer without a bias gets one if the folded
    constants are nonzero.

    Transformer layers that build their feed-forward block from an
    `intermediate_dim` argument (KerasHub's `TransformerEncoder` and
    `TransformerDecoder`) are rebuilt with fewer intermediate units (see
    `keras_regkit.compacting.feedforward`); a model that is or holds a subclassed
    functional model (a KerasHub backbone) comes back as a plain Functional
    model of the same layers. A feed-forward block written with plain
    `Dense` layers is compacted like any other.

    Removed blocks (`granularity="block"`: a KerasHub transformer layer
    whose attention and feed-forward output projections are all zero, a
    plain-Keras residual branch whose last layer is; see
    `keras_regkit.pruning.blocks`) are taken out of the graph: the stream
    passes on, through the block's layer norms for a post-norm transformer
    layer (see `keras_regkit.compacting.blocks`), and `removed_blocks` names
    them.

    Attention layers lose their dead heads (a head is dead when its slice of
    the output projection is all zero; see `dead_units`): a
    `MultiHeadAttention` is rebuilt from its config with a smaller
    `num_heads` and the kept heads' slices of its query, key, value and
    output projections. KerasHub's `TransformerEncoder`/`TransformerDecoder`
    derive their heads' width from `num_heads`, so one with dead heads is
    written out as its own sublayers (plain Keras layers and ops, named
    `<layer>_<sublayer>`; see `keras_regkit.compacting.attention`). A gated
    attention's gate is sliced with its heads. An attention layer whose
    every head is dead, a KerasHub feed-forward block whose every unit is
    dead, and a `Dense` reading only a `Dense` whose every unit is dead
    (Functional models) are written as the constant they output, added to
    the residual around them (see `keras_regkit.compacting.bypass`).

    What stays: the model's output units; channels that reach a layer compact
    cannot reason about (listed in `skipped`: unknown or subclassed layers,
    nested models, shared layers, channels_first, grouped convolutions);
    channels whose nonzero constant would meet zero padding in a
    `padding="same"` or `"causal"` consumer, where folding is not exact at
    the borders (listed in `kept`).

    The new model is built with `from_config` from the original's config with
    fewer units, then given the sliced weights. keras_regkit's regularizers
    and constraints are dropped from it (they only act in training), so it
    saves and loads without keras_regkit; Keras' own ones stay. It is not
    compiled. The original model is unchanged.

    Args:
        model: A built `keras.Sequential` or Functional `keras.Model`, with
            channels-last layers.
        custom_objects: Optional dict of the model's custom classes that are
            not registered with Keras, as in `keras.saving.load_model`.

    Returns:
        A `CompactResult`: the new model, units before and after per layer,
        skipped layers and parameter counts.

    Raises:
        TypeError: If `model` is not a `keras.Model`, or `custom_objects`
            is not a dict of names to classes.
        ValueError: If `model` is not built, or is a subclassed model; if
            a transformer layer to rewrite is called with a key/value
            cache, or an attention layer without heads with
            `return_attention_scores=True`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)),
    ...     keras.layers.Dense(4, activation="relu", name="h"),
    ...     keras.layers.Dense(2, name="out")])
    >>> kernel = model.get_layer("h").kernel
    >>> _ = kernel.assign(kernel * np.array([1, 0, 1, 0], "float32"))  # 2 dead
    >>> result = rk.compact(model)
    >>> result.units["h"], result.params_before - result.params_after
    ((4, 2), 12)
    >>> x = np.ones((1, 3), "float32")
    >>> np.allclose(result.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    True
    """
    if custom_objects is not None and (
        not isinstance(custom_objects, dict)
        or not all(isinstance(k, str) and callable(v) for k, v in custom_objects.items())
    ):
        raise TypeError(
            "Invalid value for argument `custom_objects`: expected None or a dict "
            "mapping class names to classes, as for `keras.saving.load_model`. "
            f"Received: custom_objects={custom_objects!r}"
        )
    original, removed_blocks = model, []
    if isinstance(model, keras.Model) and model.built:
        reserve_names(model)  # the copies below build operations into its graph
        model, removed_blocks = blocks.bypass(model)
    if isinstance(model, keras.Model) and model.built and feedforward.needs_flattening(model):
        model, block_units, block_dead = feedforward.flatten(model)
    else:
        block_units, block_dead = {}, {}
    _check_model(model)
    analysis = Analysis(Graph.of(model))

    config = model.get_config()
    # A Functional entry names its layer (a nested subclassed model's own
    # config may not); a Sequential entry only in its config.
    entries = {entry.get("name") or entry["config"]["name"]: entry for entry in config["layers"]}
    # Layer -> {variable attribute: value}, or a list for `set_weights`.
    new_weights = {}
    for name, plan in analysis.plans.items():
        if plan.kind != "skip" and any(
            analysis.removable[id(t)].any() for t in plan.inputs + plan.outputs
        ):
            new_weights[name] = _edit(plan, analysis, entries[name])
    _strip_regkit(config)
    new_model = type(model).from_config(config, custom_objects=custom_objects)

    for layer in model.layers:
        new_layer = new_model.get_layer(layer.name)
        values = new_weights.get(layer.name)
        if values is not None:
            if isinstance(values, list):
                new_layer.set_weights(values)
                continue
            for attr, value in values.items():
                variable = getattr(new_layer, attr)
                variable.assign(value.astype(variable.dtype))
        else:
            new_layer.set_weights(layer.get_weights())
    units, dead, kept = _report(analysis)
    return CompactResult(
        model=new_model,
        # Flattening's figures first: an attention layer rebuilt there has no
        # dead heads left for the analysis to see.
        units={**block_units, **{k: v for k, v in units.items() if k not in block_units}},
        dead={**block_dead, **{k: v for k, v in dead.items() if k not in block_dead}},
        kept=kept,
        skipped=dict(analysis.skipped),
        params_before=int(original.count_params()),
        params_after=int(new_model.count_params()),
        removed_blocks=tuple(removed_blocks),
    )
