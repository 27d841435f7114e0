"""The shrink's learning rate: set at the start, put back at the end."""

from __future__ import annotations

import keras

from keras_regkit import _validate
from keras_regkit._optimizer_slots import inner  # a LossScaleOptimizer steps with its inner one's rate


class LearningRatePolicy:
    """What rate the optimizer trains at during the shrink.

    Args:
        learning_rate: A float, `"auto"` or None (leave it). `"auto"` is 3x
            the current rate if the optimizer has trained, the current rate
            otherwise (see `ShrinkPhase`).
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
            optimizer.learning_rate = self._shrink_rate(optimizer, current)
        except TypeError:  # a LearningRateSchedule: not settable
            if self.learning_rate == "auto":
                return
            raise ValueError(
                f"ShrinkPhase(learning_rate={self.learning_rate}) cannot set the rate of an optimizer "
                "that follows a LearningRateSchedule: pass learning_rate=None to keep the schedule."
            ) from None
        self.user_rate = current

    def _shrink_rate(self, optimizer, current: float) -> float:
        if self.learning_rate != "auto":
            return self.learning_rate
        # A higher rate recovers from cuts far better (the benchmark's
        # largest lever, in both modes). A fresh optimizer (compiled, never
        # stepped) takes first steps as large as its rate on every weight:
        # at 3x that wrecked a trained transformer
        # (benchmarks/bench_transformer_shrink.py), so it keeps the rate.
        trained = int(keras.ops.convert_to_numpy(optimizer.iterations)) > 0
        return 3.0 * current if trained else current

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


def validated(learning_rate):
    """`learning_rate` as the shrink takes it: a float, `"auto"` or None."""
    if learning_rate is None or (isinstance(learning_rate, str) and learning_rate == "auto"):
        return learning_rate
    return _validate.real("learning_rate", learning_rate)
