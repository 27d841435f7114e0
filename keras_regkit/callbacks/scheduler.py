"""`RegularizationScheduler`: moves every scheduled strength during `fit`."""

from __future__ import annotations

import math
import warnings

import keras
from keras import ops

from keras_regkit import _step_functions, _validate, attach


@keras.saving.register_keras_serializable(package="keras_regkit")
class RegularizationScheduler(keras.callbacks.Callback):
    """Drives every scheduled strength of the model during `fit`.

    It finds each of our regularizers whose strength is a schedule, wherever
    it sits in the model (nested layers and models included), and evaluates
    its schedules at the current step:

    - `update_freq="batch"` (default): the step advances with the
      optimizer's iteration count, the step a learning-rate schedule sees.
      The regularizers read `optimizer.iterations` directly inside the train
      step, so there is no per-batch host work and nothing is retraced when
      the step moves. Each regularizer advances from its own position: a
      reloaded model resumes its schedules where they were saved, even with
      a fresh optimizer, and a penalty attached mid-fit starts from its step
      (0 unless set) at the next epoch. A `fit` resumed by
      `keras.callbacks.BackupAndRestore` (which restores the optimizer's
      iteration count) continues the schedules where the backup was taken,
      whichever of the two callbacks is listed first.
    - `update_freq="epoch"`: the step is the epoch index (0-based, counting
      `initial_epoch`), set at the start of each epoch.

    After each epoch it adds to `logs`, so History, CSVLogger, TensorBoard
    and the progress bar show them:

    - `reg_loss`: the total weight penalty of the model at the epoch's end
      weights (all regularizers, Keras' own included);
    - `strength/<variable path>` (with `/l1`, `/l2` appended for
      `ElasticNet`): the current strength of each scheduled regularizer.

    Both are taken at the end of the epoch: with `update_freq="batch"` at the
    step the next batch will use (as Keras logs `learning_rate`), with
    `"epoch"` at the step of the epoch just finished.

    Backends: TensorFlow and PyTorch support both modes (their train steps
    read the step live, compiled or not). JAX supports `"epoch"` only: its
    compiled train step holds the step as a constant, so the train and test
    functions are rebuilt (one retrace and compile) at each epoch whose
    strengths differ from the last; it cannot follow the optimizer's
    iteration count within an epoch.

    The schedules stay bound to the step counter after `fit`, so the step
    saved with the model is the one training reached.

    Args:
        update_freq: `"batch"` or `"epoch"`. Defaults to `"batch"`.
        log_strengths: Whether to add the strengths to `logs`.
            Defaults to True.
        log_reg_loss: Whether to add `reg_loss` to `logs`. Defaults to True.

    Raises:
        ValueError: If `update_freq` is not `"batch"` or `"epoch"`, or is
            `"batch"` under JAX. During `fit`, at its start and at each
            epoch's, if a schedule gives NaN or inf at the step the next
            batch uses (the message names the weight, the schedule and
            the step).

    Warns:
        UserWarning: At the start of `fit`, if the model has no scheduled
            strength to move.
        TypeError: If `log_strengths` or `log_reg_loss` is not True or False.

    Example:

    >>> sched = keras.optimizers.schedules.PolynomialDecay(0.0, 100, 1e-3)
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(1, kernel_regularizer=rk.regularizers.L1(sched))])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=2,
    ...     verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    >>> sorted(k for k in history.history if k != "loss")
    ['reg_loss', 'strength/dense/kernel']
    """

    def __init__(
        self,
        update_freq: str = "batch",
        log_strengths: bool = True,
        log_reg_loss: bool = True,
    ):
        super().__init__()
        if update_freq not in ("batch", "epoch"):
            raise ValueError(
                "Invalid value for argument `update_freq`: expected 'batch' or "
                f"'epoch'. Received: update_freq={update_freq!r}"
            )
        if update_freq == "batch" and not _step_functions.step_functions_read_variables_live():
            # JAX threads only the model's own state through its jitted step,
            # so `optimizer.iterations` is invisible there (see
            # `step_functions_read_variables_live`).
            raise ValueError(
                "RegularizationScheduler(update_freq='batch') does not work under "
                f"the {keras.backend.backend()!r} backend: its compiled train step "
                "holds each regularizer's step as a constant and cannot follow the "
                "optimizer's iteration count. Use update_freq='epoch' (the step is "
                "the epoch index; the train step is recompiled when a strength "
                "changes), or KERAS_BACKEND='tensorflow' or 'torch'. "
                f"Received: update_freq={update_freq!r}"
            )
        self.update_freq = update_freq
        self.log_strengths = _validate.boolean("log_strengths", log_strengths)
        self.log_reg_loss = _validate.boolean("log_reg_loss", log_reg_loss)
        self._scheduled = {}

    def get_config(self) -> dict:
        return {
            "update_freq": self.update_freq,
            "log_strengths": self.log_strengths,
            "log_reg_loss": self.log_reg_loss,
        }

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, _validate.init_arguments(cls))
        return cls(**config)

    def set_model(self, model):
        super().set_model(model)
        # fit hands over the model before any `on_train_begin`. A callback
        # that restores the optimizer there (`BackupAndRestore`) moves the
        # counter; the schedules must follow that jump whichever of the two
        # callbacks comes first in the list.
        optimizer = getattr(model, "optimizer", None)
        self._counter_at_setup = (
            None if optimizer is None else int(ops.convert_to_numpy(optimizer.iterations))
        )

    def on_train_begin(self, logs=None):
        self._sync_bindings(counter_at_setup=getattr(self, "_counter_at_setup", None))
        if not self._scheduled:
            warnings.warn(
                f"RegularizationScheduler has nothing to schedule in model '{self.model.name}': it looks "
                "for keras_regkit regularizers (L1, L2, ElasticNet, ExpAbs, GroupLasso, also inside "
                "Combined) on trainable weights whose strength is a "
                "keras.optimizers.schedules.LearningRateSchedule. "
                "Give a penalty a schedule, e.g. rk.regularizers.L1(keras.optimizers.schedules."
                "PolynomialDecay(0.0, 1000, 1e-4)); one attached later is picked up at the next epoch.",
                stacklevel=2,
            )
        self._check_finite()

    def on_epoch_begin(self, epoch, logs=None):
        # Again at every epoch: a scheduled penalty attached mid-fit (by
        # another callback) must start moving too.
        self._sync_bindings()
        if self.update_freq == "epoch":
            scheduled = list(self._scheduled.values())
            # JAX's compiled steps hold the strengths they were traced with:
            # rebuild them if this epoch changes any (never elsewhere).
            live = _step_functions.step_functions_read_variables_live()
            traced = None if live else [r.current_strengths() for r in scheduled]
            for regularizer in scheduled:
                regularizer.set_step(epoch)
            if not live and traced != [r.current_strengths() for r in scheduled]:
                _step_functions.rebuild_step_functions(self.model)
        self._check_finite()

    def _check_finite(self) -> None:
        """Refuses a schedule that gives NaN or inf at the step the next batch
        uses: its penalty, and so the loss, would be NaN or inf, with no
        other word (Keras' `TerminateOnNaN` would only see the loss)."""
        for path, regularizer in self._scheduled.items():
            for name, value in regularizer.current_strengths().items():
                if not math.isfinite(value):
                    raise ValueError(
                        f"RegularizationScheduler: the strength schedule of '{path}' gives {name}={value} "
                        f"at step {regularizer.step}, so its penalty, and the loss, would be {value}. "
                        f"A schedule must give finite values at every step. Regularizer: {regularizer!r}"
                    )

    def _sync_bindings(self, counter_at_setup=None):
        self._scheduled = attach.scheduled_regularizers(self.model)
        counter = self.model.optimizer.iterations if self.update_freq == "batch" else None
        stale = [r for r in self._scheduled.values() if r.step_counter is not counter]
        # How far a restore moved the counter since `set_model` (0 mid-fit).
        jump = 0
        if counter is not None and counter_at_setup is not None:
            jump = int(ops.convert_to_numpy(counter)) - counter_at_setup
        for regularizer in stale:
            if counter is None:
                regularizer.unbind_step()
            else:
                regularizer.bind_step(counter)
                if jump:
                    regularizer.set_step(regularizer.step + jump)
        if stale:
            # The train function read the old steps; trace it once more.
            _step_functions.rebuild_step_functions(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.log_reg_loss:
            logs["reg_loss"] = float(ops.convert_to_numpy(attach.total_penalty(self.model)))
        if self.log_strengths:
            for path, regularizer in self._scheduled.items():
                strengths = regularizer.current_strengths()
                for name, value in strengths.items():
                    key = f"strength/{path}" if len(strengths) == 1 else f"strength/{path}/{name}"
                    logs[key] = value
