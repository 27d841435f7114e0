"""Strength schedules that `keras.optimizers.schedules` lacks.

Use Keras' own schedules wherever they fit (`PolynomialDecay(0.0, n, target)`
ramps from 0 to `target` over `n` steps). This module adds only shapes that
regularization needs.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_regkit import _validate


@keras.saving.register_keras_serializable(package="keras_regkit")
class DelayedRamp(keras.optimizers.schedules.LearningRateSchedule):
    """Holds `initial` until `delay_steps`, then ramps linearly to `target`.

    `value(step) = initial` for `step < delay_steps`, then moves linearly to
    `target` over `ramp_steps` steps and stays there. With `ramp_steps=0` it is
    a step function. The usual use is to train without a penalty first and
    switch it on gradually, without the jump a sudden penalty gives the loss.

    Args:
        target: Strength reached at the end of the ramp, a float in
            [0, 3.4e38] (float32's range).
        delay_steps: Steps before the ramp starts, an int >= 0.
        ramp_steps: Length of the ramp in steps, an int >= 0.
        initial: Strength before the ramp, a float in [0, 3.4e38].
            Defaults to 0.0.

    Raises:
        TypeError, ValueError: If an argument has the wrong type or range.

    Example:

    >>> ramp = rk.schedules.DelayedRamp(target=1e-3, delay_steps=100, ramp_steps=100)
    >>> [round(float(ramp(s)), 6) for s in (0, 100, 150, 200, 1000)]
    [0.0, 0.0, 0.0005, 0.001, 0.001]
    """

    def __init__(
        self,
        target: float,
        delay_steps: int,
        ramp_steps: int,
        initial: float = 0.0,
    ):
        self.target = _validate.strength("target", target)
        self.delay_steps = _validate.integer("delay_steps", delay_steps)
        self.ramp_steps = _validate.integer("ramp_steps", ramp_steps)
        self.initial = _validate.strength("initial", initial)

    def __call__(self, step):
        # The step stays an integer until it is clipped to the ramp: float32
        # holds integers exactly only up to 2**24 (16.8M steps), past which
        # `float32(step)` would put the ramp at the wrong step.
        step = ops.convert_to_tensor(step)
        if self.ramp_steps == 0:
            progress = ops.where(step >= self.delay_steps, 1.0, 0.0)
        else:
            offset = ops.clip(step - self.delay_steps, 0, self.ramp_steps)
            progress = ops.cast(offset, "float32") / self.ramp_steps
        return self.initial + (self.target - self.initial) * progress

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, _validate.init_arguments(cls))
        return cls(**config)

    def get_config(self) -> dict:
        return {
            "target": self.target,
            "delay_steps": self.delay_steps,
            "ramp_steps": self.ramp_steps,
            "initial": self.initial,
        }
