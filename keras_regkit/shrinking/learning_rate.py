"""The shrink's learning rate: set at the start, put back at the end."""

from __future__ import annotations

import keras

from keras_regkit import _validate


def _inner(optimizer):
    # A LossScaleOptimizer (mixed precision) steps with its inner one's rate.
    return getattr(optimizer, "inner_optimizer", optimizer)


class LearningRatePolicy:
    """What rate the optimizer trains at during the shrink.

    Args:
        learning_rate: A float, `"auto"` or None (leave it). `"auto"` is 3x
            the current rate if the optimizer has trained, the current rate
            otherwise (see `ShrinkPhase`).
        mode_name: `"sparsity"` or `"tolerance"`.
    """

    def __init__(self, learning_rate, mode_name: str):
        if not (learning_rate is None or learning_rate == "auto"):
            learning_rate = _validate.real("learning_rate", learning_rate)
        self.learning_rate = learning_rate
        self.mode_name = mode_name
        self.user_rate = None  # the rate to put back, once set

    def current(self, model) -> float:
        return float(keras.ops.convert_to_numpy(_inner(model.optimizer).learning_rate))

    def apply(self, model) -> None:
        """Sets the shrink's rate, remembering the user's."""
        if self.learning_rate is None:
            return
        optimizer = _inner(model.optimizer)
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

    def lower(self, model) -> bool:
        """Back to the user's rate for the rest of the shrink, if the shrink
        had raised it; whether it did."""
        if self.user_rate is None or self.current(model) <= self.user_rate:
            return False
        _inner(model.optimizer).learning_rate = self.user_rate
        return True

    def restore(self, model) -> None:
        """Puts the user's rate back (once)."""
        if self.user_rate is not None:
            _inner(model.optimizer).learning_rate = self.user_rate
            self.user_rate = None

    # -- resuming ----------------------------------------------------------
    def state(self, model) -> dict:
        return {"user_learning_rate": self.user_rate, "shrink_learning_rate": self.current(model)}

    def resume(self, model, numbers: dict) -> None:
        self.user_rate = numbers["user_learning_rate"]
        if self.user_rate is not None:
            _inner(model.optimizer).learning_rate = numbers["shrink_learning_rate"]
