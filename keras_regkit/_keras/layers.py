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
