"""Private reads of Keras' backend: whether Keras is tracing symbolically,
and whether `fit` will build a model's compiled loss and metrics first."""

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


def compiled_loss_and_metrics_built(model) -> bool:
    """Whether a compiled model's loss and metrics are built (a `fit`,
    `evaluate` or `compute_loss` built them): until they are, Keras' JAX
    `fit` builds them from the structure of the first batch's targets,
    before any callback runs (`Trainer._symbolic_build`)."""
    try:
        parts = (model._compile_loss, model._compile_metrics)
    except AttributeError as error:
        raise moved("keras", "Trainer._compile_loss and Trainer._compile_metrics", error) from None
    try:
        return all(part is None or bool(part.built) for part in parts)
    except AttributeError as error:
        raise moved("keras", "the `built` flag of a model's compiled loss and metrics", error) from None
