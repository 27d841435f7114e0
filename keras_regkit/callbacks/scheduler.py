"""`RegularizationScheduler`: moves every scheduled strength during `fit`."""

from __future__ import annotations

import keras
from keras import ops

from keras_regkit import _validate, attach


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
      (0 unless set) at the next epoch.
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

    TensorFlow backend only for now: under JAX and PyTorch the train step
    would read the step as a constant.

    The schedules stay bound to the step counter after `fit`, so the step
    saved with the model is the one training reached.

    Args:
        update_freq: `"batch"` or `"epoch"`. Defaults to `"batch"`.
        log_strengths: Whether to add the strengths to `logs`.
            Defaults to True.
        log_reg_loss: Whether to add `reg_loss` to `logs`. Defaults to True.

    Raises:
        ValueError: If `update_freq` is not `"batch"` or `"epoch"`.
        RuntimeError: Under a backend other than TensorFlow.

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
        if keras.backend.backend() != "tensorflow":
            # Under JAX and PyTorch the train step reads the step counter as
            # a constant captured at trace time (DESIGN.md trap 2).
            raise RuntimeError(
                "RegularizationScheduler needs the TensorFlow backend for now. "
                f"Current backend: {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow, or use float strengths."
            )
        if update_freq not in ("batch", "epoch"):
            raise ValueError(
                "Invalid value for argument `update_freq`: expected 'batch' or "
                f"'epoch'. Received: update_freq={update_freq!r}"
            )
        self.update_freq = update_freq
        self.log_strengths = log_strengths
        self.log_reg_loss = log_reg_loss
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

    def on_train_begin(self, logs=None):
        self._sync_bindings()

    def on_epoch_begin(self, epoch, logs=None):
        # Again at every epoch: a scheduled penalty attached mid-fit (by
        # another callback) must start moving too.
        self._sync_bindings()
        if self.update_freq == "epoch":
            for regularizer in self._scheduled.values():
                regularizer.set_step(epoch)

    def _sync_bindings(self):
        self._scheduled = attach.scheduled_regularizers(self.model)
        counter = self.model.optimizer.iterations if self.update_freq == "batch" else None
        stale = [r for r in self._scheduled.values() if r.step_counter is not counter]
        for regularizer in stale:
            if counter is None:
                regularizer.unbind_step()
            else:
                regularizer.bind_step(counter)
        if stale:
            # The train function read the old steps; trace it once more.
            attach.rebuild_step_functions(self.model)

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
