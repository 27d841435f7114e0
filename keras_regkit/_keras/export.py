"""Private reads of Keras for exporting a model: what Keras' own export
asks of it."""

from __future__ import annotations

from keras_regkit._keras import moved


def was_called(layer) -> bool:
    """Whether `layer` has been called at least once (`Layer._called`): Keras'
    ONNX export refuses a model that was never called, and says so only after
    tracing starts."""
    try:
        return bool(layer._called)
    except AttributeError as error:
        raise moved("keras", "Layer._called", error) from None
