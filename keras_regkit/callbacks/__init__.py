"""Callbacks for `model.fit`."""

from keras_regkit.callbacks.scheduler import RegularizationScheduler
from keras_regkit.callbacks.shrink import ShrinkPhase, ShrinkResult, shrink
from keras_regkit.callbacks.sparsity import SparsityMonitor

__all__ = ["RegularizationScheduler", "ShrinkPhase", "ShrinkResult", "SparsityMonitor", "shrink"]
