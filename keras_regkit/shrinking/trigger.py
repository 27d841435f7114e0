"""When the shrink starts: at an epoch, or on a plateau of a metric.

The plateau is Keras' own idiom (`EarlyStopping`, `ReduceLROnPlateau`): a
`monitor` by log name, a `mode`, the best value so far, and `patience`
epochs without improvement. At the start the best weights come back, as
`EarlyStopping(restore_best_weights=True)` does.
"""

from __future__ import annotations

from keras_regkit import _validate
from keras_regkit.shrinking.evaluation import maximizes


class StartTrigger:
    """Decides, at each epoch's end, whether the shrink starts now: at
    `start_epoch`, with the weights of the best `val_loss` so far when fit
    logs one. `Plateau` starts it on a metric's plateau instead.

    Args:
        start_epoch: Start at this epoch (at the latest, with a plateau).
    """

    patience: int | None = None
    monitor = "val_loss"
    mode = "auto"

    def __init__(self, start_epoch: int | None):
        self.start_epoch = None if start_epoch is None else _validate.integer("start_epoch", start_epoch)
        self.reset()

    def reset(self) -> None:
        self.best, self.best_weights, self.wait = None, None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if maximizes(self.monitor, self.mode) else value < self.best

    def starts_after(self, model, epoch: int, logs: dict) -> bool:
        """Whether the shrink starts after `epoch`; if it does on a watched
        metric, `model` is back at its best weights."""
        if self.monitor not in logs and self.patience is None:
            return epoch + 1 >= self.start_epoch  # nothing to pick the best weights by
        if self.monitor not in logs:
            raise ValueError(
                f"ShrinkPhase waits on {self.monitor!r}, which is not in the epoch logs "
                f"{sorted(logs)}. Pass validation data to fit, or choose `monitor=` among them, "
                "or give `start_epoch=`."
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_weights, self.wait = value, model.get_weights(), 0
        else:
            self.wait += 1
        due = self.start_epoch is not None and epoch + 1 >= self.start_epoch
        if due or (self.patience is not None and self.wait >= self.patience):
            model.set_weights(self.best_weights)
            return True
        return False

    # -- resuming ----------------------------------------------------------
    def get_state(self) -> dict:
        return {"wait": self.wait, "best_value": self.best, "best_weights": self.best_weights}

    def set_state(self, state: dict) -> None:
        self.wait, self.best, self.best_weights = state["wait"], state["best_value"], state["best_weights"]


class Plateau(StartTrigger):
    """Starts the shrink once `monitor` has not improved for `patience`
    epochs, with the best weights restored (as
    `EarlyStopping(restore_best_weights=True)` would), or at `start_epoch`
    at the latest: `ShrinkPhase(start_epoch=Plateau(patience=3))`.

    Args:
        patience: Epochs without improvement before the shrink starts.
        monitor: The log name to watch. Defaults to `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"`, as in `EarlyStopping`.
        start_epoch: Start at this epoch at the latest. Defaults to None.
    """

    def __init__(self, patience: int, monitor: str = "val_loss", mode: str = "auto", start_epoch: int | None = None):
        super().__init__(start_epoch)
        self.patience = _validate.integer("patience", patience, minimum=1)
        if not isinstance(monitor, str):
            raise TypeError(f"Invalid value for argument `monitor`: expected a log name (str). Received: monitor={monitor!r}")
        if not monitor:
            raise ValueError("Invalid value for argument `monitor`: expected a log name such as 'val_loss'. "
                             "Received: monitor=''")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Invalid value for argument `mode`: expected 'auto', 'min' or 'max'. Received: mode={mode!r}")
        self.monitor, self.mode = monitor, mode

    def __repr__(self) -> str:
        return (f"Plateau(patience={self.patience}, monitor={self.monitor!r}, mode={self.mode!r}, "
                f"start_epoch={self.start_epoch})")
