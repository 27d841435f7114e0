"""The shrink's learning rate: set at the start, put back at the end."""

from __future__ import annotations

import keras

from keras_regkit import _validate
from keras_regkit._keras.layers import sublayers
from keras_regkit._optimizer_slots import inner  # a LossScaleOptimizer steps with its inner one's rate


class LearningRatePolicy:
    """What rate the optimizer trains at during the shrink.

    Args:
        learning_rate: A float, `"auto"` or None (leave it). `"auto"` is 3x
            the current rate if the optimizer has trained and the model has
            no recurrent layer, the current rate otherwise (see
            `auto_factor`).
    """

    def __init__(self, learning_rate="auto"):
        self.learning_rate = validated(learning_rate)
        self.user_rate = None  # the rate to put back, once set

    def current(self, model) -> float:
        return float(keras.ops.convert_to_numpy(inner(model.optimizer).learning_rate))

    def apply(self, model) -> None:
        """Sets the shrink's rate, remembering the user's."""
        if self.learning_rate is None:
            return
        optimizer = inner(model.optimizer)
        current = self.current(model)
        try:
            optimizer.learning_rate = self._shrink_rate(model, current)
        except TypeError:  # a LearningRateSchedule: not settable
            if self.learning_rate == "auto":
                return
            raise ValueError(
                f"ShrinkPhase(learning_rate={self.learning_rate}) cannot set the rate of an optimizer "
                "that follows a LearningRateSchedule: pass learning_rate=None to keep the schedule."
            ) from None
        self.user_rate = current

    def _shrink_rate(self, model, current: float) -> float:
        if self.learning_rate != "auto":
            return self.learning_rate
        return auto_factor(model) * current

    def raised(self, model) -> bool:
        """Whether the shrink runs above the user's rate."""
        return self.user_rate is not None and self.current(model) > self.user_rate

    def lower(self, model) -> None:
        """Back to the user's rate for the rest of the shrink."""
        if self.raised(model):
            inner(model.optimizer).learning_rate = self.user_rate

    def restore(self, model) -> None:
        """Puts the user's rate back (once)."""
        if self.user_rate is not None:
            inner(model.optimizer).learning_rate = self.user_rate
            self.user_rate = None

    # -- resuming ----------------------------------------------------------
    def get_state(self, model) -> dict:
        return {"user_learning_rate": self.user_rate, "shrink_learning_rate": self.current(model)}

    def set_state(self, model, state: dict) -> None:
        self.user_rate = state["user_learning_rate"]
        if self.user_rate is not None:
            inner(model.optimizer).learning_rate = state["shrink_learning_rate"]


# What `"auto"` multiplies a trained optimizer's rate by. A higher rate
# recovers from cuts far better on feed-forward models (the benchmarks'
# largest lever, in both modes); on a GRU it lost accuracy at every level of
# the sparsity mode (benchmarks/bench_tolerance_models.py), as recurrent
# weights compound a step's change over every time step.
RAISE, RECURRENT_RAISE = 3.0, 1.0


def auto_factor(model: keras.Model) -> float:
    """The factor `learning_rate="auto"` applies to the model's rate:
    `RECURRENT_RAISE` for a model with a recurrent layer (any
    `keras.layers.RNN`, GRU and LSTM included, at any depth, inside a
    `Bidirectional` too), else `RAISE`; 1 for an optimizer that has never stepped (a
    fresh one takes first steps as large as its rate on every weight: at 3x
    that wrecked a trained transformer, benchmarks/bench_transformer_shrink.py)."""
    if int(keras.ops.convert_to_numpy(inner(model.optimizer).iterations)) == 0:
        return 1.0
    recurrent = any(isinstance(layer, keras.layers.RNN) for layer in sublayers(model))
    return RECURRENT_RAISE if recurrent else RAISE


def validated(learning_rate):
    """`learning_rate` as the shrink takes it: a float, `"auto"` or None."""
    if learning_rate is None or (isinstance(learning_rate, str) and learning_rate == "auto"):
        return learning_rate
    return _validate.real("learning_rate", learning_rate)
