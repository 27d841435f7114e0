"""Private reads of Keras layers: the sublayers a layer tracks."""

from __future__ import annotations

from keras_regkit._keras import moved


def sublayers(layer, recursive: bool = True, include_self: bool = False) -> list:
    """The layers `layer` tracks (its attributes, lists and dicts of
    layers), depth first; Keras' own walk (`Layer._flatten_layers`), which
    also finds the sublayers of a subclassed layer that `model.layers` does
    not list."""
    try:
        walk = layer._flatten_layers
    except AttributeError as error:
        raise moved("keras", "Layer._flatten_layers", error) from None
    return list(walk(include_self=include_self, recursive=recursive))


# Where Keras' MultiHeadAttention keeps its projections (EinsumDense layers).
QUERY_KEY_VALUE, OUTPUT = ("_query_dense", "_key_dense", "_value_dense"), "_output_dense"


def attention_projections(layer) -> tuple[tuple, object]:
    """The query, key and value projections and the output projection of a
    built `keras.layers.MultiHeadAttention` (or a subclass)."""
    found = [getattr(layer, name, None) for name in QUERY_KEY_VALUE + (OUTPUT,)]
    if any(sub is None or getattr(sub, "kernel", None) is None for sub in found):
        missing = [n for n, sub in zip(QUERY_KEY_VALUE + (OUTPUT,), found) if sub is None]
        raise moved("keras", f"MultiHeadAttention.{'/'.join(missing) or 'projection kernels'}")
    return tuple(found[:3]), found[3]


def argument_attribute(layer, argument: str) -> str | None:
    """The attribute `layer` keeps its constructor `argument` in: the
    argument's own name, or for Keras' layers that keep it private (e.g.
    `MultiHeadAttention._kernel_regularizer`) that name; None if it has
    neither (a layer of another library that keeps it elsewhere)."""
    for attribute in (argument, f"_{argument}"):
        if hasattr(layer, attribute):
            return attribute
    if type(layer).__module__.startswith("keras."):
        raise moved("keras", f"{type(layer).__name__}._{argument}")
    return None
