"""Callbacks for `model.fit`."""

from keras_regkit.callbacks.scheduler import RegularizationScheduler
from keras_regkit.callbacks.sparsity import SparsityMonitor
from keras_regkit.shrinking import ShrinkPhase, ShrinkResult, shrink

__all__ = ["RegularizationScheduler", "ShrinkPhase", "ShrinkResult", "SparsityMonitor", "shrink"]
