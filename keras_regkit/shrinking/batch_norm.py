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
"""

from __future__ import annotations

import keras

from keras_regkit._keras.layers import sublayers
from keras_regkit._step_functions import rebuild_step_functions

# A statistic then reflects roughly the last 1 / (1 - 0.9) = 10 steps: one
# `cut_every` of the default policies, so a check made a cut interval after
# a cut sees mostly statistics of the network as cut.
SHRINK_MOMENTUM = 0.9


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
