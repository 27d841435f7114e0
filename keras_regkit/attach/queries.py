"""The penalties a model carries: its regularized weights, its scheduled
penalties, their total."""

from __future__ import annotations

import keras

from keras_regkit.regularizers import combined
from keras_regkit.regularizers.base import Penalty


def regularized_variables(model: keras.Model) -> list[keras.Variable]:
    """Every trainable variable of `model` with a regularizer, ours or not
    (Keras adds penalties of trainable weights only)."""
    return [v for v in model.trainable_weights if getattr(v, "regularizer", None) is not None]


def scheduled_regularizers(model: keras.Model) -> dict[str, Penalty]:
    """Our regularizers with a schedule, keyed by the path of their first
    variable within `model` (e.g. `"dense/kernel"`). A regularizer shared by
    several weights appears once; parts of a `Combined` are found too."""
    found, seen = {}, set()
    prefix = f"{model.name}/"
    for variable in regularized_variables(model):
        path = variable.path
        path = path[len(prefix):] if path.startswith(prefix) else path
        for regularizer in combined.parts(variable.regularizer):
            if (
                isinstance(regularizer, Penalty)
                and regularizer.is_scheduled
                and id(regularizer) not in seen
            ):
                seen.add(id(regularizer))
                found[path] = regularizer
    return found


def total_penalty(model: keras.Model):
    """The sum of all weight penalties of `model` at its current weights, as a
    float32 scalar tensor (computed on the device)."""
    terms = [
        keras.ops.cast(v.regularizer(v), "float32") for v in regularized_variables(model)
    ]
    return keras.ops.sum(keras.ops.stack(terms)) if terms else keras.ops.zeros(())
