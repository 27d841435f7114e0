"""When the shrink starts: at an epoch, or on a plateau of a metric.

The plateau is Keras' own idiom (`EarlyStopping`, `ReduceLROnPlateau`): a
`monitor` by log name, a `mode`, the best value so far, and `patience`
epochs without improvement. At the start the best weights come back, as
`EarlyStopping(restore_best_weights=True)` does.
"""

from __future__ import annotations

from keras_regkit import _validate
from keras_regkit.shrinking import guards as guards_lib


class StartTrigger:
    """Decides, at each epoch's end, whether the shrink starts now.

    Args:
        start_epoch: Start at this epoch at the latest, or None.
        patience: Start once `monitor` has not improved for this many
            epochs, or None.
        monitor: The log name to watch (`"val_loss"` if None).
        mode: `"min"`, `"max"` or `"auto"`, as in `EarlyStopping`.
    """

    def __init__(self, start_epoch: int | None, patience: int | None, monitor: str | None, mode: str = "auto"):
        if start_epoch is None and patience is None:
            raise ValueError(
                "ShrinkPhase needs `start_epoch` or `patience` to know when to "
                "begin. Received: start_epoch=None, patience=None"
            )
        self.start_epoch = None if start_epoch is None else _validate.integer("start_epoch", start_epoch)
        self.patience = None if patience is None else _validate.integer("patience", patience, minimum=1)
        self.monitor = monitor or "val_loss"
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self.best, self.best_weights, self.wait = None, None, 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if guards_lib.maximizes(self.monitor, self.mode) else value < self.best

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
    def state(self) -> tuple[dict, dict]:
        """Numbers and weight snapshots to save."""
        return {"wait": self.wait, "best_value": self.best}, ({} if self.best_weights is None else {"best": self.best_weights})

    def restore(self, numbers: dict, snapshots: dict) -> None:
        self.wait, self.best = numbers["wait"], numbers["best_value"]
        self.best_weights = snapshots.get("best")
