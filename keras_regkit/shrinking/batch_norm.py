"""BatchNormalization statistics that keep up with the shrink.

A BatchNormalization layer's moving mean and variance follow the network at
the pace its `momentum` sets: Keras' default keeps 0.99 of the old value a
step, MobileNetV2's layers 0.999. The shrink changes the network within a
few hundred steps (each cut, and training at a raised rate), so at 0.999
most of each statistic still describes the network before its units were
cut: measured on a unit-shrunk MobileNetV2 (docs/benchmarks.md), the
inference model's deep layers put out standard deviations up to 12 instead
of 1, which cost the float model most of its accuracy, stretched the ranges
the int8 converter calibrates, and made the tolerance mode's checks judge a
model no one would deploy. During the shrink the statistics follow at
`SHRINK_MOMENTUM` at most (about the last 10-20 batches), and the user's
momentum is back at the end.

That pace still leaves each statistic an average over the last few batches
of a network whose weights moved at each of them (on MobileNetV2, 91-96 %
full-int8 agreement against the dense model's 96-97 %). So `shrink()`
ends with `refresh_batch_norm` on up to `REFRESH_SAMPLES` of its training
inputs (`refresh_from`): the statistics of the network as it ends, the
weights unchanged. A `ShrinkPhase` in your own `fit` does not see the
data: call `keras_regkit.deploy.refresh_batch_norm` after it.
"""

from __future__ import annotations

import keras

from keras_regkit._keras.layers import sublayers
from keras_regkit._step_functions import rebuild_step_functions
from keras_regkit.deploy.batch_norm import batch_norm_layers, refresh_batch_norm
from keras_regkit.shrinking.data import read_once, sample_inputs

# A statistic then reflects roughly the last 1 / (1 - 0.9) = 10 steps: one
# `cut_every` of the default policies, so a check made a cut interval after
# a cut sees mostly statistics of the network as cut.
SHRINK_MOMENTUM = 0.9
# Inputs the statistics are re-estimated on at the end (a random sample of
# `x`): 16 batches of 256, a pass that costs little next to the shrink.
REFRESH_SAMPLES = 4096


class StatisticsPace:
    """Sets every trainable BatchNormalization layer's momentum to at most
    `SHRINK_MOMENTUM` for the shrink, and puts the user's back.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.999)])
    >>> pace = StatisticsPace()
    >>> pace.apply(model)
    >>> model.layers[0].momentum
    0.9
    >>> pace.restore(model)
    >>> model.layers[0].momentum
    0.999
    """

    def __init__(self):
        self.user_momentum = {}  # layer -> its momentum, while changed
        self.refresh_data = None  # the training data to refresh on at the end

    def refresh_from(self, x) -> None:
        """Refreshes the statistics on `x` (training inputs, as `fit`'s
        `x`) at `finish`; not for data that can be read only once."""
        self.refresh_data = None if read_once(x) else x

    def apply(self, model: keras.Model) -> None:
        """Lowers the momentum of the model's BatchNormalization layers
        above `SHRINK_MOMENTUM`; remembers theirs (once)."""
        for layer in sublayers(model):
            if (isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                    and layer.momentum > SHRINK_MOMENTUM and layer not in self.user_momentum):
                self.user_momentum[layer] = layer.momentum
                layer.momentum = SHRINK_MOMENTUM
        if self.user_momentum:  # a compiled step holds the momentum it was traced with
            rebuild_step_functions(model, losses_changed=False)

    def restore(self, model: keras.Model) -> None:
        """Puts each changed layer's momentum back (once)."""
        for layer, momentum in self.user_momentum.items():
            layer.momentum = momentum
        if self.user_momentum:
            rebuild_step_functions(model, losses_changed=False)
        self.user_momentum = {}

    def finish(self, model: keras.Model, refresh: bool = True, int8=None) -> int:
        """`restore`, then (with `refresh` and data from `refresh_from`)
        re-estimates the statistics on the data; with `int8` (the shrink's
        `Int8Training`), on the float model, and the int8 ranges are
        calibrated again after. Returns the number of layers refreshed."""
        self.restore(model)
        if not (refresh and self.refresh_data is not None and batch_norm_layers(model)):
            return 0
        inputs = sample_inputs(self.refresh_data, REFRESH_SAMPLES)
        simulation = int8.simulation if int8 is not None else None
        if simulation is not None:
            simulation.stop()
        try:
            return refresh_batch_norm(model, inputs)
        finally:
            if simulation is not None:
                simulation.start()  # calibrates again: the ranges of the refreshed model
