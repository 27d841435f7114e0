"""Callbacks for `model.fit`."""

from keras_regkit.callbacks.proximal import ProximalUpdate
from keras_regkit.callbacks.scheduler import RegularizationScheduler
from keras_regkit.callbacks.sparsity import SparsityMonitor
from keras_regkit.shrinking.callback import ShrinkPhase

__all__ = ["ProximalUpdate", "RegularizationScheduler", "ShrinkPhase", "SparsityMonitor"]
