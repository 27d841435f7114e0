"""Callbacks for `model.fit`."""

from keras_regkit.callbacks.scheduler import RegularizationScheduler

__all__ = ["RegularizationScheduler"]
