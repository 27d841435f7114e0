"""`ShrinkPhase` and `shrink`: push a trained model's weights to zero while
its validation metric holds, then leave exact zeros.

A composition of the package's pieces: a temporary penalty attached with
`attach`, its strength on an `ExponentialDecay` ladder, acceptance measured by
`stats`, exact zeros and their hold from `pruning`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import warnings

import keras
import numpy as np

from keras_regkit import _validate, attach, pruning, stats
from keras_regkit import weights as weights_lib
from keras_regkit.compact import dead_units
from keras_regkit.regularizers import L1, Combined, GroupLasso

_RUNGS_BELOW = 4  # how far the penalty may back off below `strength` (then 0)
_STATE_FOLDER = "keras_regkit_shrink"  # inside `backup_dir`
_RESUMED_RESULT = ("baseline", "started_at_epoch", "accepted_epochs", "rejected_epochs", "threshold", "outcome")


@keras.saving.register_keras_serializable(package="keras_regkit")
class _StrengthLadder(keras.optimizers.schedules.LearningRateSchedule):
    """The shrink penalty's strength by rung: `lowest * growth ** (rung - 1)`
    from rung 1 up, and no penalty at rung 0. Rung 0 is where rejections
    end: once the cuts have used up the tolerance, even the weakest penalty
    fails every epoch, while an epoch without it recovers accuracy (the
    zeros held) for the next cut."""

    def __init__(self, lowest: float, growth: float):
        self.lowest = float(lowest)
        self.growth = float(growth)

    def __call__(self, rung):
        rung = keras.ops.cast(rung, "float32")
        strength = self.lowest * keras.ops.power(self.growth, keras.ops.maximum(rung - 1.0, 0.0))
        return keras.ops.where(rung < 1.0, 0.0, strength)

    def get_config(self) -> dict:
        return {"lowest": self.lowest, "growth": self.growth}


_VALIDATION_HINT = (
    "Pass validation data to fit (`validation_data=` or `validation_split=`), "
    "or `validation_data=` to ShrinkPhase."
)


@dataclasses.dataclass
class ShrinkResult:
    """What a shrink phase did.

    Attributes:
        monitor: The monitored metric.
        baseline: Its value when the phase started (the best so far).
        final: Its value at the end, on the validation data.
        started_at_epoch: The epoch the shrink began (None if it never did).
        accepted_epochs, rejected_epochs: Epochs within / outside tolerance.
        threshold: The magnitude pruned at (None if nothing was pruned): of
            entries, or with `granularity="unit"` of units, relative to
            their layer's mean (see `keras_regkit.prune`).
        granularity: `"weight"` or `"unit"`, as the phase was given.
        sparsity: Fraction of exact zeros over the covered weights.
        layers: Per-weight `LayerStats` at the end.
        dead_units: Layer path -> `(dead, total)` units (output units,
            filters) at the end; `keras_regkit.compact` removes the dead.
        outcome: `"pruned"`, `"fine-tuned"`, `"best accepted"` (no pruning)
            or `"baseline"` (nothing held the tolerance, weights restored).

    Example:

    >>> result = rk.ShrinkResult("val_accuracy", baseline=0.97, final=0.965,
    ...     accepted_epochs=[0, 1], rejected_epochs=[2], sparsity=0.8, outcome="pruned")
    >>> result.epochs_used
    3
    >>> print(str(result).splitlines()[0])
    shrink: pruned; val_accuracy 0.97 -> 0.965; exact zeros 80.0%
    """

    monitor: str
    baseline: float | None = None
    final: float | None = None
    started_at_epoch: int | None = None
    accepted_epochs: list = dataclasses.field(default_factory=list)
    rejected_epochs: list = dataclasses.field(default_factory=list)
    threshold: float | None = None
    sparsity: float = 0.0
    layers: list = dataclasses.field(default_factory=list)
    outcome: str = "not started"
    dead_units: dict = dataclasses.field(default_factory=dict)
    granularity: str = "weight"

    @property
    def epochs_used(self) -> int:
        return len(self.accepted_epochs) + len(self.rejected_epochs)

    @property
    def _pruned_what(self) -> str:
        return "unit RMS / layer mean" if self.granularity == "unit" else "|w|"

    def __str__(self) -> str:
        lines = [
            f"shrink: {self.outcome}; {self.monitor} {self.baseline:.4g} -> "
            f"{self.final:.4g}; exact zeros {self.sparsity:.1%}"
            if self.baseline is not None and self.final is not None
            else f"shrink: {self.outcome}",
            f"epochs: {len(self.accepted_epochs)} accepted, {len(self.rejected_epochs)} rejected"
            + (f"; pruned at {self._pruned_what} <= {self.threshold:.3g}" if self.threshold is not None else ""),
        ]
        lines += [f"  {s.name}: {s.sparsity:.1%} of {s.params:,}" for s in self.layers]
        dead = [f"{name} {d}/{n}" for name, (d, n) in self.dead_units.items() if d]
        if dead:
            lines.append(f"dead units: {', '.join(dead)}")
        return "\n".join(lines)


class ShrinkPhase(keras.callbacks.Callback):
    """Shrinks a model that already works, guarded by a validation metric.

    Joins an ordinary `fit`. The phase:

    1. **Starts** at `start_epoch`, or once `monitor` has not improved for
       `patience` epochs. It restores the best weights seen so far and takes
       their monitored value as the baseline.
    2. **Shrinks**: a penalty (`penalty(strength_schedule)`, L1 by default)
       is added to the covered weights, on top of any penalty they already
       have. Its strength starts at `strength` and is multiplied by `growth`
       after every accepted epoch. With `strength=0` the penalty stays at 0:
       each epoch only trains, with the zeros held, between cuts (iterative
       pruning); on the README's MLP benchmark it held accuracy better
       than a penalty, on its CNN worse.
    3. **Judges each epoch**: accepted if `monitor` is within `tolerance` of
       the baseline (absolute, or relative to `|baseline|` with
       `relative=True`) and the loss is finite. After an accepted epoch (with
       `prune=True`) the covered weights are pruned to exact zeros at the
       largest global sparsity whose validation metric still holds the
       tolerance (bisection on the magnitude), and those zeros are held by
       Keras constraints from then on, so each epoch recovers slack for the
       next cut. A rejected epoch is rolled back to the sparsest accepted
       weights and the strength backs off two rungs: down to `strength /
       growth**4`, then to none at all, an epoch that only recovers
       accuracy, with the zeros held, for the next cut.
    4. **Ends** (last epoch, or `fine_tune_epochs` before it): restores the
       sparsest accepted weights (exact zeros; with `prune=False`, the
       fraction with `|w| <= near_zero`), removes the temporary penalty and
       prunes once more. With `fine_tune_epochs`, the remaining epochs train
       with the zeros held and the result is kept only if it still holds the
       tolerance. Then the zeros are released: the saved model carries no
       constraint of ours.

    The model never ends outside the tolerance: if the final state does not
    hold it, the baseline weights are restored. That promise is about the
    validation data, which the phase consults hundreds of times (each epoch,
    each step of each cut's search), so the cuts it keeps are those that
    happened to hold there: on unseen data the metric can fall further than
    `tolerance`, the more so the smaller the validation set. Give it as much
    validation data as you can spare, and a tolerance below the loss you
    can accept. `fit` does not call
    `on_train_end` when an exception (a `KeyboardInterrupt`, an error in
    another callback) ends it early; use the callback as a context manager,
    or `keras_regkit.shrink`, and the weights are then restored to the
    sparsest accepted state whatever happens:

    ```python
    with ShrinkPhase(start_epoch=20) as phase:
        model.fit(x, y, validation_split=0.1, epochs=30, callbacks=[phase])
    print(phase.result)
    ```

    Works under TensorFlow, JAX and PyTorch. Under JAX the compiled train
    step holds the penalty's strength and the held zeros as constants, so it
    is rebuilt (retraced) after each epoch of the phase.

    **Structured shrink.** With `granularity="unit"` the phase works on whole
    output units of `Dense` layers and filters of convolutions: the default
    penalty is `GroupLasso`, and pruning zeroes whole units (ranked by the
    RMS of their kernel slice relative to their layer's mean), never those
    of the layers that produce the model's outputs. `result.dead_units`
    reports the dead units per layer, and `keras_regkit.compact(model)` then
    removes them, for a model that is really smaller and faster.

    **Resuming.** `keras.callbacks.BackupAndRestore` saves only the model and
    the optimizer; the phase keeps its own state (where it is, the baseline,
    the strength rung, accepted and rejected epochs, the best, baseline and
    accepted weights, the held zeros). Give it a `backup_dir` (the same
    directory as BackupAndRestore's is fine: it writes in a
    `keras_regkit_shrink` folder there) and it saves that state at the end of
    every epoch, after its verdict, and deletes it when `fit` ends normally.
    A `fit` interrupted and run again, with a fresh model, optimizer and
    callbacks built by the same code, goes on where the backup left off and
    ends as the uninterrupted run would have:

    ```python
    backup = "/tmp/backup"
    phase = ShrinkPhase(start_epoch=20, backup_dir=backup)
    with phase:
        model.fit(x, y, validation_split=0.1, epochs=30, callbacks=[
            phase, keras.callbacks.BackupAndRestore(backup)])
    ```

    Either order of the two callbacks works. With ShrinkPhase first, an
    interruption between the two saves loses nothing; with BackupAndRestore
    first it loses that epoch's verdict (a warning says so). The state is
    taken per epoch: with BackupAndRestore's `save_freq` in batches, the
    phase goes on from the start of the interrupted epoch. An interrupted
    run that is never resumed still ends at the sparsest accepted weights
    when used as a context manager, as above. Each save writes up to four
    copies of the model's weights; files are local paths only.

    Args:
        start_epoch: Epoch at which the shrink begins (0 needs `baseline` or
            `validation_data`). Give this or `patience`.
        patience: Start once `monitor` has not improved for this many epochs.
        monitor: Validation metric to hold. Defaults to `"val_loss"`, which
            Keras computes with every penalty added, the phase's own too:
            that penalty then counts against the tolerance (use
            `strength=0`, or a metric, to judge the model alone).
        mode: `"min"`, `"max"` or `"auto"` (max for accuracy/AUC-like names).
        tolerance: How far `monitor` may move from the baseline, >= 0.
            Defaults to 0.01.
        relative: Whether `tolerance` is a fraction of `|baseline|`.
            Defaults to False (absolute).
        penalty: Callable taking a strength (a schedule) and returning one of
            our regularizers. Defaults to `keras_regkit.regularizers.L1`, or
            `GroupLasso` with `granularity="unit"`.
        strength: First strength of the penalty, >= 0 (0: no penalty, only
            cuts and the training between them). Defaults to 1e-4.
        growth: Factor applied to the strength per accepted epoch, > 1.
            Defaults to 1.5.
        weights: Weight kinds to shrink. Defaults to `"kernel"`.
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.
        prune: Whether to end with exact zeros. Defaults to True.
        fine_tune_epochs: Last epochs of `fit` spent fine-tuning with the
            zeros held. Defaults to 0.
        near_zero: Magnitude under which a weight counts towards an accepted
            state's sparsity. Defaults to 1e-3.
        validation_data: Optional `(x, y)` tuple or dataset for the final
            pruning search (otherwise fit's own validation data is used).
        baseline: Optional baseline value (used with `start_epoch=0`).
        verbose: 1 prints each decision and the result.
        granularity: `"weight"` (exact zeros anywhere) or `"unit"` (whole
            output units and filters, see above). Defaults to `"weight"`.
        max_sparsity: The most zeros (a fraction of the covered entries, or
            units) that pruning may make; once there, the phase holds them
            and spends the remaining epochs recovering accuracy. Defaults
            to 1.0 (as many as the tolerance allows).
        backup_dir: Optional directory where the phase keeps its state so
            that a `fit` resumed by `keras.callbacks.BackupAndRestore` goes
            on where it was (see above). Defaults to None (no state saved).

    Raises:
        ValueError, TypeError: For bad arguments, at construction; during
            `fit`, `ValueError` if `monitor` is not in the logs (no
            validation data).

    References:
        Hanson & Pratt, "Comparing biases for minimal network construction
        with back-propagation", NeurIPS 1988 (penalty-driven shrinking); Zhu &
        Gupta, "To prune, or not to prune", 2017 (magnitude pruning).
    """

    def __init__(
        self,
        start_epoch: int | None = None,
        patience: int | None = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        tolerance: float = 0.01,
        relative: bool = False,
        penalty=None,
        strength: float = 1e-4,
        growth: float = 1.5,
        weights="kernel",
        layers="*",
        prune: bool = True,
        fine_tune_epochs: int = 0,
        near_zero: float = 1e-3,
        validation_data=None,
        baseline: float | None = None,
        verbose: int = 0,
        granularity: str = "weight",
        backup_dir: str | None = None,
        max_sparsity: float = 1.0,
    ):
        super().__init__()
        if start_epoch is None and patience is None:
            raise ValueError(
                "ShrinkPhase needs `start_epoch` or `patience` to know when to "
                "begin. Received: start_epoch=None, patience=None"
            )
        self.start_epoch = None if start_epoch is None else _validate.integer("start_epoch", start_epoch)
        self.patience = None if patience is None else _validate.integer("patience", patience, minimum=1)
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                "Invalid value for argument `mode`: expected 'auto', 'min' or "
                f"'max'. Received: mode={mode!r}"
            )
        if not isinstance(monitor, str):
            raise TypeError(f"Invalid value for argument `monitor`: expected a str. Received: monitor={monitor!r}")
        self.monitor = monitor
        self.mode = mode
        self.tolerance = _validate.real("tolerance", tolerance)
        self.relative = bool(relative)
        if granularity not in pruning.GRANULARITIES:
            raise ValueError(
                "Invalid value for argument `granularity`: expected one of "
                f"{list(pruning.GRANULARITIES)}. Received: granularity={granularity!r}"
            )
        self.granularity = granularity
        if penalty is None:
            penalty = GroupLasso if granularity == "unit" else L1
        if not callable(penalty):
            raise TypeError(
                "Invalid value for argument `penalty`: expected a regularizer "
                "class or a callable `strength -> regularizer`. "
                f"Received: penalty={penalty!r}"
            )
        self.penalty = penalty
        self.strength = _validate.real("strength", strength)
        self.growth = _validate.real("growth", growth, minimum=1.0)
        if self.growth == 1.0:
            raise ValueError(f"Invalid value for argument `growth`: expected a float > 1. Received: growth={growth}")
        self.weights_spec = weights_lib.normalize_kinds(weights)
        weights_lib.check_selector(layers)
        self.layers = layers
        self.prune = bool(prune)
        self.fine_tune_epochs = _validate.integer("fine_tune_epochs", fine_tune_epochs)
        self.near_zero = _validate.real("near_zero", near_zero)
        self.max_sparsity = _validate.real("max_sparsity", max_sparsity, maximum=1.0)
        self.validation_data = validation_data
        self.baseline = None if baseline is None else _validate.real("baseline", baseline, minimum=-math.inf)
        if self.start_epoch == 0 and baseline is None and validation_data is None:
            raise ValueError(
                "ShrinkPhase(start_epoch=0) needs `baseline=` or `validation_data=`: "
                "before the first epoch no validation value is known."
            )
        self.verbose = verbose
        if backup_dir is not None and (not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir)):
            raise TypeError(
                "Invalid value for argument `backup_dir`: expected a non-empty directory "
                "path (str or os.PathLike), e.g. the `backup_dir` of your "
                f"`keras.callbacks.BackupAndRestore`. Received: backup_dir={backup_dir!r}"
            )
        self.backup_dir = backup_dir
        self.result = ShrinkResult(monitor, granularity=self.granularity)

    # -- the guard --------------------------------------------------------
    def _maximize(self) -> bool:
        if self.mode != "auto":
            return self.mode == "max"
        name = self.monitor.removeprefix("val_")
        return any(key in name for key in ("acc", "auc", "precision", "recall", "f1"))

    def _better(self, value, than) -> bool:
        return value > than if self._maximize() else value < than

    def _holds(self, value) -> bool:
        if value is None or not math.isfinite(value):
            return False
        slack = self.tolerance * abs(self._baseline) if self.relative else self.tolerance
        if self._maximize():
            return value >= self._baseline - slack
        return value <= self._baseline + slack

    def _evaluate(self) -> float:
        """The monitored value of the current weights on the validation data."""
        model = self.model
        name = self.monitor.removeprefix("val_")
        if self.validation_data is not None:
            data = self._validation_dataset()
            if isinstance(data, (tuple, list)):
                logs = model.evaluate(*data[:2], verbose=0, return_dict=True)
            else:
                logs = model.evaluate(data, verbose=0, return_dict=True)
        elif self._fit_validation is not None:
            # fit's own validation iterator (it deletes its reference before
            # on_train_end, so we keep one); Keras evaluates it this way itself.
            had = getattr(model, "_eval_epoch_iterator", None)
            model._eval_epoch_iterator = self._fit_validation
            try:
                logs = model.evaluate(verbose=0, return_dict=True, _use_cached_eval_dataset=True)
            finally:
                model._eval_epoch_iterator = had
        else:
            raise ValueError(f"ShrinkPhase has no validation data to evaluate {self.monitor!r}. {_VALIDATION_HINT}")
        if name not in logs:
            raise ValueError(
                f"ShrinkPhase monitors {self.monitor!r}, but evaluation gives only "
                f"{sorted(logs)}. Choose `monitor=` among {sorted('val_' + k for k in logs)}."
            )
        return float(logs[name])

    def _validation_dataset(self):
        # The final search evaluates dozens of times: under TensorFlow an
        # (x, y) tuple becomes one cached dataset (about 8x less overhead per
        # evaluation than converting the arrays again each time).
        data = self.validation_data
        if not isinstance(data, (tuple, list)) or keras.backend.backend() != "tensorflow":
            return data
        if getattr(self, "_cached_validation", None) is None:
            import tensorflow as tf

            self._cached_validation = tf.data.Dataset.from_tensor_slices(tuple(data[:2])).batch(256).cache()
        return self._cached_validation

    # -- fit hooks --------------------------------------------------------
    def on_train_begin(self, logs=None):
        if getattr(self, "_phase", None) in ("shrinking", "fine-tuning"):
            self.abort()  # the last fit ended by an exception outside `with`
        self.result = ShrinkResult(self.monitor, granularity=self.granularity)
        self._phase = "waiting"
        self._best_value = None
        self._best_weights = None
        self._wait = 0
        self._fit_validation = None
        self._attachment = None
        self._pruned_weights = None
        # Restored at the first epoch, once BackupAndRestore (wherever it is
        # in the list) has loaded its backup and set the epoch to go on from.
        self._pending_resume = bool(self._saved_states())
        if self.start_epoch == 0 and not self._pending_resume:
            self._baseline = self.baseline if self.baseline is not None else self._evaluate()
            self._start(0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_resume:
            self._pending_resume = False
            if not self._resume(epoch) and self.start_epoch == 0:
                self._baseline = self.baseline if self.baseline is not None else self._evaluate()
                self._start(0)
        self._maybe_fine_tune(epoch)

    def _maybe_fine_tune(self, epoch):
        if self._phase != "shrinking":
            return
        fine_tune_from = self.params.get("epochs", 0) - self.fine_tune_epochs
        if (self.fine_tune_epochs and epoch >= fine_tune_from) or self._at_max_sparsity():
            self._finish(hold=True)
            self._phase = "fine-tuning"
            self._say(f"Epoch {epoch + 1}: fine-tuning with the zeros held.")

    def _at_max_sparsity(self) -> bool:
        if self.max_sparsity >= 1.0 or not self.prune:
            return False
        prunable = pruning.select_prunable(self.model, self.layers, self.weights_spec, self.granularity)
        return pruning.zero_fraction(prunable, self.granularity) >= self.max_sparsity

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"ShrinkPhase monitors {self.monitor!r}, which is not in the "
                f"epoch logs {sorted(logs)}. {_VALIDATION_HINT}"
            )
        if getattr(self.model, "_eval_epoch_iterator", None) is not None:
            self._fit_validation = self.model._eval_epoch_iterator
        value = float(logs[self.monitor])
        if self._phase == "waiting":
            self._watch(epoch, value)
        elif self._phase == "shrinking":
            self._judge(epoch, value, logs.get("loss"))
        if epoch + 1 < self.params.get("epochs", 0):
            # Now rather than at the next epoch's start: fit's validation data
            # is reachable here even in a fit resumed at that epoch.
            self._maybe_fine_tune(epoch + 1)
        if self.backup_dir is not None:
            self._save_state(epoch + 1)

    def on_train_end(self, logs=None):
        if self._pending_resume:
            # Resumed after its last epoch: interrupted while finishing.
            self._pending_resume = False
            self._resume(self.params.get("epochs", 0))
            if self._phase in ("shrinking", "fine-tuning") and self.validation_data is None:
                warnings.warn(
                    "ShrinkPhase resumed after the last epoch, where fit's validation data "
                    "is not reachable: it ends at the sparsest accepted weights, without "
                    "the final pruning. Pass `validation_data=` to ShrinkPhase to have it.",
                    stacklevel=2,
                )
                self.abort()
        if self._phase == "shrinking":
            self._finish(hold=False)
        elif self._phase == "fine-tuning":
            pruning.release_zeros(self.model)
            if self._holds(self._evaluate()):
                self.result.outcome = "fine-tuned"
            else:
                self.model.set_weights(self._pruned_weights)
        if self._phase not in ("waiting", "done"):
            self._conclude()
        if self.backup_dir is not None:
            # Training ended normally: as BackupAndRestore deletes its backup.
            shutil.rmtree(self._state_dir(), ignore_errors=True)

    # -- context manager: restore on any exception ------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and getattr(self, "_phase", "waiting") in ("shrinking", "fine-tuning"):
            self.abort()
        return False

    def abort(self) -> None:
        """Ends the phase now at the sparsest accepted weights (no pruning):
        the temporary penalty and any held zeros are removed."""
        pruning.release_zeros(self.model)
        if self._attachment is not None:
            self._attachment.undo()
            self._attachment = None
        self.model.set_weights(self._accepted_weights)
        self.result.outcome = "best accepted" if self.result.accepted_epochs else "baseline"
        self._phase = "done"
        self._say(f"shrink interrupted: restored the {self.result.outcome} weights.")

    # -- the phase --------------------------------------------------------
    def _watch(self, epoch, value):
        if self._best_value is None or self._better(value, self._best_value):
            self._best_value, self._best_weights, self._wait = value, self.model.get_weights(), 0
        else:
            self._wait += 1
        if (self.start_epoch is not None and epoch + 1 >= self.start_epoch) or (
            self.patience is not None and self._wait >= self.patience
        ):
            self.model.set_weights(self._best_weights)
            self._baseline = self._best_value
            self._start(epoch + 1)

    def _start(self, epoch):
        self._baseline_weights = self.model.get_weights()
        self._accepted_weights = self._baseline_weights
        self._covered = stats.WeightStats(self.model, self.weights_spec, self.near_zero)
        self._best_sparsity = stats.total(self._covered.compute()).near_zero_fraction
        # The penalty's step is the rung: it starts at `strength` and can
        # back off _RUNGS_BELOW rungs below it, then to no penalty.
        self._penalty = self.penalty(_StrengthLadder(self.strength / self.growth**_RUNGS_BELOW, self.growth))
        self._penalty.set_step(_RUNGS_BELOW + 1)
        self._penalty.driver = self  # RegularizationScheduler must leave it alone
        self._refs = [
            ref
            for ref in pruning.select_prunable(self.model, self.layers, self.weights_spec, self.granularity)
            if ref.owner is None
        ]
        self._attachment = attach.set_regularizers(
            self.model,
            [
                (ref, self._penalty if ref.regularizer is None else Combined([ref.regularizer, self._penalty]))
                for ref in self._refs
            ],
        )
        self._phase = "shrinking"
        self.result.baseline = self._baseline
        self.result.started_at_epoch = epoch
        self._say(f"Epoch {epoch + 1}: shrink starts; baseline {self.monitor} = {self._baseline:.4g}.")

    def _judge(self, epoch, value, loss):
        finite_loss = loss is None or math.isfinite(float(loss))
        if finite_loss and self._holds(value):
            self.result.accepted_epochs.append(epoch)
            if self.prune:
                # Ratchet: zero what the tolerance allows now and hold it; the
                # next epoch recovers slack for the next cut (or is rolled back).
                self._prune_to_tolerance(hold=True)
            sparsity = self._sparsity()
            if sparsity >= self._best_sparsity:
                self._best_sparsity, self._accepted_weights = sparsity, self.model.get_weights()
            self._penalty.set_step(self._penalty.step + 1)
            self._say(f"Epoch {epoch + 1}: accepted ({self.monitor} {value:.4g}, sparsity {sparsity:.1%}).")
        else:
            self.result.rejected_epochs.append(epoch)
            # Back to the sparsest accepted state (its zeros are the ones
            # held), with the penalty two rungs weaker.
            self.model.set_weights(self._accepted_weights)
            self._penalty.set_step(max(self._penalty.step - 2, 0))
            self._say(f"Epoch {epoch + 1}: rejected ({self.monitor} {value:.4g}); rolled back"
                      + ("; strength backs off." if self.strength else "."))
        attach.refresh_step_functions(self.model)  # JAX holds the old strength

    def _sparsity(self) -> float:
        """Exact zeros when pruning, else the near-zero fraction."""
        total = stats.total(self._covered.compute())
        return total.sparsity if self.prune else total.near_zero_fraction

    def _finish(self, hold):
        self.model.set_weights(self._accepted_weights)
        self._attachment.undo()
        self._attachment = None
        self.result.outcome = "best accepted" if self.result.accepted_epochs else "baseline"
        if self.prune:
            self._prune_to_tolerance(hold=hold)
        if not hold:
            pruning.release_zeros(self.model)
        self._pruned_weights = self.model.get_weights()
        self._phase = "finishing"

    def _prune_to_tolerance(self, hold):
        prunable = pruning.select_prunable(self.model, self.layers, self.weights_spec, self.granularity)
        sparsity = self._largest_sparsity_that_holds(pruning.zero_fraction(prunable, self.granularity))
        if sparsity > 0:
            pruned = self._prune(sparsity, hold=hold)
            self.result.threshold = max(pruned.threshold, self.result.threshold or 0.0)
            self.result.outcome = "pruned"

    def _largest_sparsity_that_holds(self, low: float) -> float:
        """The largest global sparsity in [low, max_sparsity] that holds the
        tolerance, from the current weights (which hold it at `low`): the cap
        itself if it holds, else by bisection."""
        start = self.model.get_weights()
        high = self.max_sparsity
        if low >= high:
            return low
        if high < 1.0:
            self._prune(high)
            holds = self._holds(self._evaluate())
            self.model.set_weights(start)
            if holds:
                return high
        for _ in range(8):
            middle = (low + high) / 2
            self._prune(middle)
            if self._holds(self._evaluate()):
                low = middle
            else:
                high = middle
            self.model.set_weights(start)
        return low

    def _prune(self, sparsity, hold=False):
        return pruning.prune(
            self.model, sparsity=sparsity, weights=self.weights_spec, layers=self.layers,
            hold=hold, granularity=self.granularity,
        )

    def _conclude(self):
        final = self._evaluate()
        if not self._holds(final):
            # Never leave the model worse than the tolerance allows.
            self.model.set_weights(self._baseline_weights)
            pruning.release_zeros(self.model)
            final = self._evaluate()
            self.result.outcome = "baseline"
            self.result.threshold = None
        layers = self._covered.compute()
        self.result.final = final
        self.result.layers = layers
        self.result.sparsity = stats.total(layers).sparsity
        self.result.dead_units = dead_units(self.model)
        self._phase = "done"
        if self.verbose:
            print(self.result)

    def _say(self, message):
        if self.verbose:
            print(message)

    # -- resuming with BackupAndRestore ------------------------------------
    def _state_dir(self) -> str:
        return os.path.join(os.fspath(self.backup_dir), _STATE_FOLDER)

    def _saved_states(self) -> list[int]:
        """Epoch counts of the states on disk, newest first."""
        if self.backup_dir is None or not os.path.isdir(self._state_dir()):
            return []
        names = (re.fullmatch(r"state-(\d+)\.json", name) for name in os.listdir(self._state_dir()))
        return sorted((int(m.group(1)) for m in names if m), reverse=True)

    def _save_state(self, epochs_done: int) -> None:
        """Writes what the phase needs to go on after `epochs_done` epochs: a
        JSON of its numbers, an .npz of its weight snapshots and held masks.
        The previous state is kept too, so a backup one epoch behind still
        finds its match."""
        snapshots = {}
        if self._phase == "waiting" and self._best_weights is not None:
            snapshots["best"] = self._best_weights
        if self._phase in ("shrinking", "fine-tuning"):
            # The current weights too: with BackupAndRestore listed before this
            # callback, its backup holds them from before this epoch's verdict.
            snapshots.update(current=self.model.get_weights(), baseline=self._baseline_weights,
                             accepted=self._accepted_weights)
            if self._phase == "fine-tuning":
                snapshots["pruned"] = self._pruned_weights
        arrays, stored = {}, {}
        for name, values in snapshots.items():
            # The accepted weights are often the baseline list itself.
            same = next((s for s, v in snapshots.items() if v is values and s in stored), None)
            stored[name] = same or name
            if same is None:
                arrays.update({f"{name}_{i}": np.asarray(v) for i, v in enumerate(values)})
        held = []
        for i, variable in enumerate(self.model.weights):
            if isinstance(getattr(variable, "constraint", None), pruning.HoldZeros):
                held.append(i)
                arrays[f"mask_{i}"] = keras.ops.convert_to_numpy(variable.constraint.mask)
        penalty = getattr(self, "_penalty", None)
        state = {
            "format": 1,
            "epochs_done": epochs_done,
            "phase": self._phase,
            "wait": self._wait,
            "best_value": self._best_value,
            "baseline": getattr(self, "_baseline", None),
            "best_sparsity": float(self._best_sparsity) if self._phase != "waiting" else None,
            "penalty_step": penalty.step if self._phase == "shrinking" else None,
            "result": {name: getattr(self.result, name) for name in _RESUMED_RESULT},
            "snapshots": stored,
            "held": held,
            "shapes": [list(v.shape) for v in self.model.weights],
        }
        directory = self._state_dir()
        os.makedirs(directory, exist_ok=True)
        stem = os.path.join(directory, f"state-{epochs_done}")
        # The JSON last: a state counts only once both files are complete.
        _write_atomically(stem + ".npz", lambda f: np.savez(f, **arrays))
        _write_atomically(stem + ".json", lambda f: f.write(json.dumps(state).encode()))
        # Older ones, and newer ones left by a run this one did not resume.
        for old in set(self._saved_states()) - {epochs_done, epochs_done - 1}:
            for suffix in (".json", ".npz"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(directory, f"state-{old}{suffix}"))

    def _resume(self, epoch: int) -> bool:
        """Restores the newest state saved at or before `epoch`, the epoch
        fit goes on from; False if there is none."""
        for done in self._saved_states():
            if done > epoch:
                continue  # written after the backup fit resumed from
            stem = os.path.join(self._state_dir(), f"state-{done}")
            try:
                with open(stem + ".json") as f:
                    state = json.load(f)
                if state.get("format") != 1:
                    raise ValueError(f"unknown format {state.get('format')!r}")
                with np.load(stem + ".npz", allow_pickle=False) as f:
                    arrays = dict(f)
            except (OSError, ValueError) as error:
                warnings.warn(f"ShrinkPhase skips its unreadable state {stem}: {error}", stacklevel=2)
                continue
            if done < epoch:
                warnings.warn(
                    f"ShrinkPhase resumes at epoch {epoch + 1} from its state after epoch {done}: "
                    f"the verdict on the epochs in between was lost in the interruption, so they "
                    "count as neither accepted nor rejected. List ShrinkPhase before "
                    "BackupAndRestore in `callbacks` to avoid this.",
                    stacklevel=2,
                )
            self._restore_state(state, arrays, stem)
            return True
        return False

    def _restore_state(self, state: dict, arrays: dict, stem: str) -> None:
        variables = self.model.weights
        shapes = [list(v.shape) for v in variables]
        if state["shapes"] != shapes:
            raise ValueError(
                f"ShrinkPhase cannot resume from {stem}.json: it was written for a model with "
                f"weights of shapes {state['shapes']}, and this model's are {shapes}. Delete "
                "the backup, or pass the `backup_dir` of this model's own training."
            )

        def snapshot(name):
            return [arrays[f"{state['snapshots'][name]}_{i}"] for i in range(len(variables))]

        self._wait, self._best_value = state["wait"], state["best_value"]
        if "best" in state["snapshots"]:
            self._best_weights = snapshot("best")
        if state["phase"] in ("shrinking", "fine-tuning"):
            self._baseline = state["baseline"]
            self.model.set_weights(snapshot("baseline"))
            verbose, self.verbose = self.verbose, 0
            try:
                self._start(state["result"]["started_at_epoch"])  # penalty, coverage
            finally:
                self.verbose = verbose
            self._accepted_weights = snapshot("accepted")
            self._best_sparsity = state["best_sparsity"]
            if state["phase"] == "shrinking":
                self._penalty.set_step(state["penalty_step"])
            else:
                self._attachment.undo()
                self._attachment = None
                self._pruned_weights = snapshot("pruned")
                self._phase = "fine-tuning"
            self.model.set_weights(snapshot("current"))
        new_holds = False
        for i in state["held"]:
            variable = variables[i]
            if not isinstance(variable.constraint, pruning.HoldZeros):
                variable.constraint = pruning.HoldZeros(variable, variable.constraint)
                new_holds = True
            variable.constraint.mask.assign(arrays[f"mask_{i}"])
        if new_holds:
            attach.rebuild_step_functions(self.model, losses_changed=False)
        attach.refresh_step_functions(self.model)  # JAX holds the old step and masks
        self.result = ShrinkResult(self.monitor, granularity=self.granularity, **state["result"])
        self._say(f"ShrinkPhase resumed from {stem}.json ({state['phase']}).")


def _write_atomically(path: str, write) -> None:
    # Each process its own temporary file: under a multi-worker strategy
    # every worker writes the same state.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        write(f)
    os.replace(temporary, path)


def shrink(
    model: keras.Model,
    x,
    y=None,
    validation_data=None,
    epochs: int = 10,
    tolerance: float = 0.01,
    batch_size: int | None = None,
    callbacks=(),
    verbose: int = 0,
    **phase_kwargs,
) -> ShrinkResult:
    """Shrinks an already trained, compiled model (`ShrinkPhase` from epoch 0).

    Args:
        model: A compiled, trained model; changed in place.
        x, y: Training data, as for `fit`.
        validation_data: `(x_val, y_val)` or a dataset; required.
        epochs: The budget, fine-tuning included. Defaults to 10.
        tolerance: See `ShrinkPhase`. Defaults to 0.01.
        batch_size, callbacks, verbose: Passed to `fit`.
        **phase_kwargs: Any other `ShrinkPhase` argument (`monitor`,
            `relative`, `penalty`, `fine_tune_epochs`, ...).

    Returns:
        The `ShrinkResult`.

    Raises:
        ValueError: Without validation data, or for a bad argument. Whatever
            ends `fit` early (an exception, `KeyboardInterrupt`) re-raises
            after the weights are restored to the sparsest accepted state.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
    ...     keras.layers.Dense(2)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"])
    >>> _ = model.fit(x, y, epochs=20, verbose=0)
    >>> result = rk.shrink(model, x, y, validation_data=(x, y), epochs=3,
    ...     monitor="val_accuracy", tolerance=0.05)
    >>> result.final >= result.baseline - 0.05 and result.sparsity > 0
    True
    """
    if validation_data is None:
        raise ValueError("shrink() needs `validation_data=(x_val, y_val)` (or a dataset) to guard the shrink. Received: validation_data=None")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("shrink() needs a compiled model: call model.compile(...) first.")
    _validate.integer("epochs", epochs, minimum=1)
    phase = ShrinkPhase(start_epoch=0, validation_data=validation_data, tolerance=tolerance, verbose=verbose, **phase_kwargs)
    with phase:
        model.fit(
            x, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
            callbacks=[phase, *callbacks], verbose=verbose,
        )
    return phase.result
