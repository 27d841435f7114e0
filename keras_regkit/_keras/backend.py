"""Private reads of Keras' backend: whether Keras is tracing symbolically."""

from __future__ import annotations

from keras_regkit._keras import moved


def in_symbolic_scope() -> bool:
    """Whether Keras is building state symbolically: under JAX and PyTorch,
    `fit` first runs the model and its losses on placeholders (Keras'
    `SymbolicScope`) to create the optimizer's and the metrics' variables,
    before any callback has run."""
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope as keras_in_symbolic_scope
    except ImportError as error:
        raise moved("keras", "keras.src.backend.common.symbolic_scope.in_symbolic_scope", error) from None
    return bool(keras_in_symbolic_scope())
