"""`Combined`: several regularizers on one weight."""

from __future__ import annotations

import warnings

import keras
from keras import ops

from keras_regkit import _validate
from keras_regkit.regularizers.base import PACKAGE


def _check_part_serializable(index: int, regularizer) -> None:
    # A lambda or an unregistered function saves, then fails at reload (in
    # safe mode, or in another process): refuse it now, as unserializable
    # schedules are.
    try:
        with warnings.catch_warnings():  # Keras' own warning about lambdas: we raise instead
            warnings.simplefilter("ignore")
            keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(regularizer))
    except Exception as error:
        raise TypeError(
            f"Invalid value for argument `regularizers`: item {index}, "
            f"{regularizer!r}, cannot be saved and reloaded with the model, so a "
            "model using it could not be loaded again. Use a "
            "`keras.regularizers.Regularizer` (ours or Keras'), or register your "
            "class or function with `@keras.saving.register_keras_serializable()`. "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from None


@keras.saving.register_keras_serializable(package=PACKAGE)
class Combined(keras.regularizers.Regularizer):
    """The sum of several regularizers on one weight.

    `ShrinkPhase` uses it to add its penalty to one the user already has; it
    is just as usable directly.

    Args:
        regularizers: A list of regularizers (ours, Keras' or any registered
            serializable callable that returns a scalar).

    Raises:
        TypeError: If `regularizers` is not a non-empty list of callables, or
            one of them could not be saved and reloaded with the model (a
            lambda, an unregistered function or class).

    Example:

    >>> reg = rk.regularizers.Combined([rk.regularizers.L1(0.1), keras.regularizers.L2(0.1)])
    >>> round(float(reg(keras.ops.ones((2, 2)))), 6)
    0.8
    """

    def __init__(self, regularizers):
        regularizers = list(regularizers) if isinstance(regularizers, (list, tuple)) else regularizers
        if not isinstance(regularizers, list) or not regularizers or not all(
            callable(r) for r in regularizers
        ):
            raise TypeError(
                "Invalid value for argument `regularizers`: expected a non-empty "
                f"list of regularizers. Received: regularizers={regularizers!r}"
            )
        for index, regularizer in enumerate(regularizers):
            _check_part_serializable(index, regularizer)
        self.regularizers = regularizers

    def __call__(self, x):
        return sum(ops.cast(r(x), "float32") for r in self.regularizers)

    def get_config(self) -> dict:
        return {
            "regularizers": [keras.saving.serialize_keras_object(r) for r in self.regularizers]
        }

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, ["regularizers"])
        if not isinstance(config.get("regularizers"), list):
            raise ValueError(
                "Invalid config for Combined: expected a list under 'regularizers'. "
                f"Received: config={config}"
            )
        return cls([keras.saving.deserialize_keras_object(r) for r in config["regularizers"]])

    def __repr__(self) -> str:
        return f"Combined([{', '.join(repr(r) for r in self.regularizers)}])"


def parts(regularizer):
    """The regularizers `regularizer` sums (those inside a `Combined`,
    nested ones too), or `regularizer` itself."""
    if isinstance(regularizer, Combined):
        for part in regularizer.regularizers:
            yield from parts(part)
    else:
        yield regularizer
