"""The base of keras_regkit's penalties: strengths, schedules, configs.

`Penalty` keeps each strength (a float or a schedule), the step the
schedules are evaluated at, the proximal flag and the config; its
subclasses (`keras_regkit.regularizers.L1`, ...) say only what they compute.
"""

from __future__ import annotations

import warnings
from typing import Union

import keras
import numpy as np
from keras import ops

from keras_regkit import _constraints as constraints
from keras_regkit import _validate
from keras_regkit._keras import FenceError
from keras_regkit._keras import backend as keras_backend

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule
Strength = Union[float, LearningRateSchedule]

# The package our classes are registered under: "keras_regkit>L1", ... (saved
# models name them so; never change it).
PACKAGE = "keras_regkit"


def read_value(x):
    """The tensor a variable (Keras' or the backend's) holds, read here:
    TensorFlow's custom gradients refuse variables read inside them, and
    PyTorch's see only tensors."""
    if isinstance(x, keras.Variable):
        x = x.value
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(x)
    return x


def _in_symbolic_build() -> bool:
    try:
        return keras_backend.in_symbolic_scope()
    except FenceError:  # only for a warning: without it, warn always
        return False


def _check_strength(name: str, value) -> Strength:
    if isinstance(value, LearningRateSchedule):
        _check_schedule_serializable(name, value)
        return value
    return _validate.strength(name, value, " or a `keras.optimizers.schedules.LearningRateSchedule`")


def _check_schedule_serializable(name: str, schedule) -> None:
    # A schedule that cannot round-trip would make `model.save` fail (or a
    # reload silently differ) long after this call; refuse it here.
    try:
        config = keras.saving.serialize_keras_object(schedule)
        keras.saving.deserialize_keras_object(config)
    except Exception as error:
        raise TypeError(
            f"Invalid value for argument `{name}`: the schedule "
            f"{type(schedule).__name__} cannot be serialized, so a model using "
            "it could not be saved and reloaded. Implement `get_config` and "
            "register the class with "
            "`@keras.saving.register_keras_serializable()`. "
            f"Received: {name}={schedule!r} ({type(error).__name__}: {error})"
        ) from None


def _max_step() -> int:
    """The largest step the step variable holds: it is an "int", as
    `optimizer.iterations` (int64 under TensorFlow, int32 under JAX and
    PyTorch)."""
    return int(np.iinfo(keras.backend.standardize_dtype("int")).max)


class Penalty(keras.regularizers.Regularizer):
    """Base of our penalties: strength bookkeeping, scheduling, configs.

    Subclasses name their strengths in `_strength_names`, put any other
    constructor arguments in `_extra_config()`, and implement `_penalty`.
    Those that can act as a proximal step name the strengths it applies in
    `_proximal_strengths` and implement `_proximal` (and, if part of the
    penalty stays a gradient term, `_penalty` handles `self.proximal`).
    """

    _strength_names: tuple[str, ...] = ()
    _proximal_strengths: tuple[str, ...] = ()

    def __init__(self, step: int = 0, proximal: bool = False, **strengths):
        self._strengths = {
            name: _check_strength(name, strengths[name])
            for name in self._strength_names
        }
        self.proximal = _validate.boolean("proximal", proximal)
        self._warned_unbound = False
        # Set by `keras_regkit.proximal.bind_proximal`: until then a proximal
        # penalty acts nowhere (see `__call__`).
        self.proximal_bound = False
        step = _validate.integer("step", step, maximum=_max_step())
        # Unbound, the step is `_own_step`. Bound to a counter (the
        # optimizer's iterations), it is `counter + _own_step`: the offset
        # keeps the schedule's position when the counter starts elsewhere (a
        # fresh optimizer on a reloaded model), and `set_step` moves only
        # this regularizer, never the shared counter.
        self._own_step = None
        self._counter = None
        if self.is_scheduled:
            # "int", as for `optimizer.iterations`: int64 under TensorFlow,
            # int32 where JAX would truncate int64 with a warning.
            self._own_step = keras.Variable(
                step, dtype="int", trainable=False, name="regularizer_step"
            )

    # -- scheduling -------------------------------------------------------
    @property
    def is_scheduled(self) -> bool:
        """Whether any strength is a schedule."""
        return any(
            isinstance(v, LearningRateSchedule) for v in self._strengths.values()
        )

    @property
    def step(self) -> int:
        """The step at which the schedules are evaluated (0 if unscheduled)."""
        if self._own_step is None:
            return 0
        return int(ops.convert_to_numpy(self._step_tensor()))

    def _step_tensor(self):
        if self._counter is None:
            return self._own_step.value
        return ops.cast(self._counter, self._own_step.dtype) + self._own_step.value

    def _counter_value(self) -> int:
        return int(ops.convert_to_numpy(self._counter)) if self._counter is not None else 0

    def set_step(self, step: int) -> None:
        """Moves every schedule of this regularizer (only) to `step`.

        Under JAX a compiled train step holds the step it was traced with:
        rebuild it afterwards (`model.make_train_function(force=True)`; our
        callbacks do this themselves).
        """
        step = _validate.integer("step", step, maximum=_max_step())
        if self._own_step is not None:
            self._own_step.assign(step - self._counter_value())

    @property
    def step_counter(self):
        """The counter the step follows (e.g. `optimizer.iterations`), or None."""
        return self._counter

    def bind_step(self, counter) -> None:
        """Makes the step advance with `counter` (e.g. `optimizer.iterations`)
        from where it is now, with no per-step host work.

        A train function traced before the bind keeps reading the old step:
        rebuild it (the scheduler callback does). Not for `model.fit` under
        JAX, whose compiled step cannot see the optimizer's counter.
        """
        if self.is_scheduled and counter is not self._counter:
            step = self.step
            self._counter = counter
            self.set_step(step)

    def unbind_step(self) -> None:
        """Freezes the step where it is (it no longer follows a counter)."""
        if self._counter is not None:
            step = self.step
            self._counter = None
            self.set_step(step)

    def current_strengths(self) -> dict[str, float]:
        """The strengths at the current step, as Python floats."""
        return {
            name: float(ops.convert_to_numpy(self._strength_tensor(name)))
            for name in self._strength_names
        }

    def _strength_tensor(self, name):
        value = self._strengths[name]
        if isinstance(value, LearningRateSchedule):
            # Clipped where it is evaluated (one scalar op): a schedule that
            # goes negative switches the penalty off, as a negative float
            # strength is refused.
            return ops.maximum(ops.cast(value(self._step_tensor()), "float32"), 0.0)
        return value

    # -- the penalty ------------------------------------------------------
    def __call__(self, x):
        if self.proximal:
            self._warn_if_unbound()
            if _in_symbolic_build():
                # `fit` calls the penalties here, before its first step, when
                # the model was compiled again: the proximal step refuses an
                # optimizer it cannot follow now, not inside that step.
                for constraint in constraints.chain(x):
                    getattr(constraint, "check_compiled_optimizer", lambda: None)()
            if set(self._proximal_strengths) == set(self._strength_names):
                # The proximal step replaces the whole gradient term.
                return ops.zeros((), "float32")
        strengths = {n: self._strength_tensor(n) for n in self._strength_names}
        return self._penalty(read_value(x), **strengths)

    def _warn_if_unbound(self) -> None:
        # Not while Keras builds the model's state symbolically (JAX and
        # PyTorch do so in `fit` before any callback has bound the penalty).
        if self.proximal_bound or self._warned_unbound or _in_symbolic_build():
            return
        self._warned_unbound = True
        warnings.warn(
            f"{self!r} is not bound to an optimizer, so its proximal part does nothing: it is "
            "not in the loss, and acts by a step after each optimizer step once bound. Pass "
            "`keras_regkit.callbacks.ProximalUpdate()` to `fit`, or call "
            "`keras_regkit.bind_proximal(model, optimizer)` before a custom training loop.",
            stacklevel=3,
        )

    def proximal_step(self, x, step_size):
        """`x` after the proximal step of this penalty's proximal part, at
        the current strengths: the `z` that minimises
        `penalty(z) + sum((z - x) ** 2 / (2 * step_size))`.

        Args:
            x: The weight right after the optimizer's step.
            step_size: The step the optimizer just took on it: a scalar (its
                learning rate, for SGD) or a tensor of the shape of `x` (its
                per-entry step, for adaptive optimizers).

        Returns:
            A tensor of the shape and dtype of `x`, with exact zeros where
            the penalty sets them.
        """
        if not self._proximal_strengths:
            raise ValueError(f"{type(self).__name__} has no proximal step (L1, ElasticNet and GroupLasso have).")
        step_size = ops.cast(step_size, "float32")
        strengths = {n: self._strength_tensor(n) for n in self._proximal_strengths}
        return self._proximal(read_value(x), step_size, **strengths)

    def _proximal(self, x, step_size, **strengths):
        raise NotImplementedError

    def _penalty(self, x, **strengths):
        """The penalty of `x`, a tensor of the variable's dtype, computed in
        float32: under mixed precision and for float16/bfloat16 variables it
        must neither overflow nor lose small terms. The cast is the
        penalty's own, inside its fused kernel where there is one: a
        separate cast would be one more pass over a float16 weight."""
        raise NotImplementedError

    # -- serialization ----------------------------------------------------
    def _extra_config(self) -> dict:
        return {}

    def get_config(self) -> dict:
        config = {}
        for name, value in self._strengths.items():
            if isinstance(value, LearningRateSchedule):
                value = keras.saving.serialize_keras_object(value)
            config[name] = value
        config.update(self._extra_config())
        if self._proximal_strengths:
            config["proximal"] = self.proximal
        if self.is_scheduled:
            # The schedule position travels with the model file.
            config["step"] = self.step
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        _validate.config_keys(cls, config, _validate.init_arguments(cls))
        for name in cls._strength_names:
            if isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={_describe(v)}" for k, v in {**self._strengths, **self._extra_config()}.items()
        )
        if self.proximal:
            args += ", proximal=True"
        return f"{type(self).__name__}({args})"


def _describe(value) -> str:
    # A schedule's default repr carries its address; reports must not.
    if isinstance(value, LearningRateSchedule):
        config = {k: v for k, v in value.get_config().items() if k != "name"}
        return f"{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"
    return repr(value)
