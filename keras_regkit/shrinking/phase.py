"""`ShrinkPhase`: the callback that composes the shrink's parts.

A trigger (`trigger`) says when to start; a learning-rate policy
(`learning_rate`) sets the rate and puts it back; a ramp (`ramps`) says how
sparse to be at each point of the budget; the pruning core says what to cut
first (`pruning.scores`), cuts to one global threshold (`pruning.cut`) and
holds the zeros (`pruning.hold`); in the tolerance mode a check (`guards`)
decides each level on the validation data; `snapshots` keep the state to go
back to, `state` what BackupAndRestore needs to resume.
"""

from __future__ import annotations

import math
import os
import warnings

import keras
import numpy as np

from keras_regkit import _validate, stats
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import units as units_lib
from keras_regkit.shrinking import data as data_lib
from keras_regkit.shrinking.climb import Climb
from keras_regkit.shrinking import guards as guards_lib
from keras_regkit.shrinking.result import ShrinkResult
from keras_regkit.shrinking.learning_rate import LearningRatePolicy
from keras_regkit.shrinking.ramps import CubicRamp, SparsitySchedule
from keras_regkit.shrinking.snapshots import Snapshot
from keras_regkit.shrinking.state import PhaseState
from keras_regkit.shrinking.trigger import StartTrigger

# The tolerance mode's last level; its checks stop it lower.
_CEILING = {"weight": 0.995, "unit": 0.95, "head": 0.95}
# The tolerance mode's candidate levels: the climb stops at each, the
# validation check tests it, and the first that fails ends the climb at the
# one before. Few, fixed looks: the labels pick among 7 states, not
# hundreds (which would keep the ones that held there by chance). The
# weights' levels start above the first cut (half the entries), which is
# not checked on its own.
_LEVELS = {"weight": (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995),
           "unit": (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95), "head": (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)}
# The first cut, made before any training step: half the entries did best
# on the benchmark's MLPs (0.8 and 0 were 0.5-2 points worse at 95 %).
# Whole units start from 0.
_INITIAL = {"weight": 0.5, "unit": 0.0, "head": 0.0}
_ACTIVE = ("ramping", "holding")
# What a resumed phase takes back from its saved state.
_RESULT_FIELDS = ("baseline", "started_at_epoch", "cuts", "rollbacks", "stopped_at", "threshold", "levels")


class ShrinkPhase(keras.callbacks.Callback):
    """Makes a trained model sparse inside `fit`: gradual pruning to exact
    zeros, to a sparsity you choose or as far as an accuracy tolerance allows.

    Two modes; give one of `sparsity` and `tolerance`:

    - **`sparsity=0.98`**: ends with exactly that fraction of exact zeros
      over the covered weights (of dead units, with `granularity="unit"`),
      at the best accuracy the budget allows.
    - **`tolerance=0.01`** (the default): as sparse as possible while the
      validation metric stays within `tolerance` of the starting model's
      (top-1 accuracy by default, or `monitor=`, e.g. `"val_mae"` for a
      regression model; see `ValidationCheck` for the units). After the
      first cut (half the entries), it climbs a few fixed `levels` (80, 90,
      95, 97, 98, 99, 99.5 % of entries): each rise takes a fifth of the
      budget along the sparsity mode's cubic, aimed at that level (the
      largest cuts first, the smallest last), so the model arrives
      recovered. At a level it trains, checked every `cut_every` steps
      without labels (how many validation inputs changed class since the
      start), until that stops falling; then the validation labels are
      read once (sample by sample against the start, counts summed over
      every process): the level holds, and the climb goes on if a rise
      still fits before the last 15 % of the budget (skipping a level if
      the model is better than at the start by more than `tolerance`,
      beyond noise), or it fails. A level above one that held that fails
      its first check trains on for half the budget left, and a second
      check decides (checked before its fine-tune, a level looks worse
      than it ends). If that fails too, weights, zeros and optimizer
      state go back to the last level that held, fine-tuned with its
      zeros fixed for the rest of the budget. At the end the check runs
      once more; if the fine-tuned model fails it, the level as it passed
      comes back. If the first level fails at the raised learning rate,
      the climb starts again from the starting weights at the model's own
      rate; if it fails there too, the starting weights come back and
      `fit` stops (outcome `"baseline"`). The labels
      are read once or twice per level, in a fixed order, so the choice
      is not selected on hundreds of looks. On the README's benchmark it
      reaches the sparsity mode's frontier on the median seed in some
      settings and stays a level below it in others (the README's table).

    How (the recipe the shrink benchmark measured best):

    1. **Starts** at `start_epoch`, or once `monitor` has not improved for
       `patience` epochs (restoring the best weights). The optimizer's
       learning rate is set for the shrink (`learning_rate`) and put back at
       the end.
    2. **Cuts** at the start and then every `cut_every` training steps to
       the sparsity `schedule(progress)` asks for (by default a cubic ramp
       from a one-shot first cut to the target, reached at 80 % of the
       budget), with one global threshold over every covered weight: the
       lowest `score`s go, where the score is `|w| · v^(1/4)`, the square
       root of the saliency `w² · sqrt(v)`, with `v` the optimizer's running
       second moment of the gradient (Adam, AdamW, Nadam, RMSprop keep one;
       others fall back to `|w|`, with a warning).
       Zeros are held by Keras constraints after every optimizer step, so
       they are exact, and the training between the cuts recovers.
    3. **Ends** (`on_train_end`): in the sparsity mode a last cut makes the
       count exact; the held zeros are released (the saved model carries no
       constraint of ours) and the learning rate is restored.

    The phase never leaves the model worse than where it can go back to: a
    non-finite loss rolls back to the last good state, and `fit` ended by an
    exception (a `KeyboardInterrupt`, an error in another callback) ends at
    the last good weights when the phase is used as a context manager, or
    through `keras_regkit.shrink`:

    ```python
    with ShrinkPhase(start_epoch=20, sparsity=0.95) as phase:
        model.fit(x, y, epochs=30, callbacks=[phase])
    print(phase.result)
    ```

    Under JAX the compiled train step holds the zeros' masks as constants,
    so it is rebuilt after each cut (raise `cut_every` to cut less often).

    **Structured shrink.** With `granularity="unit"` the cuts take whole
    units (see `keras_regkit.pruning.units`: output units of `Dense`,
    filters of convolutions, output channels of depthwise convolutions),
    scored by their entries' mean squared score relative to their layer's
    average unit, as `prune(granularity="unit")` ranks them; never those of
    the layers that produce the model's outputs.
    `keras_regkit.compact(model)` then removes them.

    **Resuming.** Give `backup_dir` (BackupAndRestore's own is fine: the
    phase writes in a `keras_regkit_shrink` folder there) and the phase
    saves its state at the end of every epoch; a `fit` interrupted and run
    again with `keras.callbacks.BackupAndRestore(backup_dir)` goes on where
    it was and ends as the uninterrupted run would have. The state is
    deleted when `fit` ends normally.

    Args (by what they decide):

    When it starts:
        start_epoch: Epoch at which the shrink begins. Give this or
            `patience`.
        patience: Start once `monitor` (`"val_loss"` if None) has not
            improved for this many epochs.
        monitor: The validation metric the phase watches, by its log name
            (`"val_mae"`): in the tolerance mode, the one that may get
            worse by at most `tolerance` (default: top-1 accuracy); with
            `patience`, the one whose plateau starts the shrink (default:
            `"val_loss"`).
        mode: `"min"`, `"max"` or `"auto"` (max for accuracy-like names),
            for `monitor`.

    How far it goes (give one of `sparsity` and `tolerance`):
        sparsity: Target fraction of exact zeros (sparsity mode), in [0, 1].
        tolerance: Largest drop of top-1 accuracy (tolerance mode), in
            [0, 1]. Defaults to 0.01 when `sparsity` is not given.
        validation_data: `(x, y)` or `(x, y, sample_weight)` arrays, a
            dataset, or a `keras.utils.PyDataset`, giving the same samples
            in the same order at each reading: the tolerance mode's checks
            (required there), and `result.baseline`/`final`. Not an
            iterator that can be read only once.
        validation_steps: How many batches of `validation_data` to read, as
            for `fit`; needed for a dataset that repeats forever.

    What it cuts:
        granularity: `"weight"` (entries), `"unit"` (whole units and
            filters, and the heads of any attention layer selected),
            `"head"` (attention heads only) or `"N:M"` (e.g. `"2:4"`: at
            most N non-zeros in every group of M inputs of each kernel, as
            in `prune`; the ramp goes from 0 to the pattern's `1 - N/M`
            through cuts that keep every group's N best, and the tolerance
            mode checks the pattern as its one level). Defaults to
            `"weight"`.
        weights: Weight kinds to shrink. Defaults to `"kernel"`.
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.

    Resuming and output:
        backup_dir: Optional directory for the phase's state (see above).
        verbose: 1 prints each decision and the result.

    Expert settings (the defaults are the benchmark's best):
        max_sparsity: The tolerance mode's last level. Defaults to
            0.995 (0.95 of units).
        levels: The tolerance mode's candidate sparsities, tested in rising
            order (`max_sparsity` is added as the last). Defaults to 0.8,
            0.9, 0.95, 0.97, 0.98, 0.99 (0.25 to 0.9 of units).
        schedule: A `SparsitySchedule`. Defaults to
            `CubicRamp(target, initial=0.5)` (`initial=0` for units). In
            the tolerance mode only its first cut, `schedule(0.0)`, is used:
            the climb paces the rest (`keras_regkit.shrinking.climb`).
        score: `"curvature"` (`|w| · v^(1/4)`, default), `"magnitude"`
            (`|w|`) or a `keras_regkit.pruning.Score`.
        cut_every: Training steps between cuts (and after a level is
            reached, before its check). Defaults to 10.
        learning_rate: The optimizer's learning rate during the shrink: a
            float, `"auto"` or None (leave it). `"auto"` is 3x the current
            one if the optimizer has trained (the benchmark's best, in both
            modes: a fresh optimizer's first steps are as large as its
            rate, and at 3x wrecked a transformer); in the tolerance mode,
            a first level that fails at 3x climbs again at the current
            rate. An optimizer that follows a schedule is left alone.
            Defaults to `"auto"`.
        guard: Optional `AgreementGuard`: in the tolerance mode, a level must
            also hold it (label-free agreement on `reference_inputs`).
        reference_inputs: Inputs for `guard` (the training inputs;
            `shrink()` passes `x`). Needed only with a guard.

    Raises:
        ValueError, TypeError: For bad arguments, at construction.

    References:
        Zhu & Gupta, "To prune, or not to prune", 2017 (gradual pruning);
        LeCun et al., "Optimal Brain Damage", NeurIPS 1989 (the score).
    """

    def __init__(
        self,
        start_epoch: int | None = None,
        patience: int | None = None,
        sparsity: float | None = None,
        tolerance: float | None = None,
        max_sparsity: float | None = None,
        levels=None,
        granularity: str = "weight",
        schedule: SparsitySchedule | None = None,
        score="curvature",
        guard: guards_lib.AgreementGuard | None = None,
        cut_every: int = 10,
        learning_rate="auto",
        reference_inputs=None,
        validation_data=None,
        validation_steps: int | None = None,
        weights="kernel",
        layers="*",
        monitor: str | None = None,
        mode: str = "auto",
        backup_dir: str | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        self.trigger = StartTrigger(start_epoch, patience, monitor, mode)
        self.start_epoch, self.patience = self.trigger.start_epoch, self.trigger.patience
        if sparsity is not None and tolerance is not None:
            raise ValueError(
                "Give one of `sparsity` (a target) and `tolerance` (an accuracy limit), not "
                f"both. Received: sparsity={sparsity!r}, tolerance={tolerance!r}"
            )
        # An N:M pattern is a ceiling: its `1 - N/M` zeros, reached from 0
        # through cuts that keep every group's N best.
        pattern_sparsity = cut_lib.pattern_sparsity(granularity)  # validates it too
        self.granularity = granularity
        kind = "weight" if pattern_sparsity is not None else granularity
        ceiling = pattern_sparsity if pattern_sparsity is not None else 1.0
        self.mode_name = "sparsity" if sparsity is not None else "tolerance"
        if sparsity is not None:
            self.sparsity = _validate.real("sparsity", sparsity, maximum=ceiling)
            self.tolerance = None
        else:
            self.sparsity = None
            self.tolerance = _validate.real("tolerance", 0.01 if tolerance is None else tolerance, maximum=1.0)
        default_ceiling = _CEILING[kind] if pattern_sparsity is None else pattern_sparsity
        self.max_sparsity = _validate.real(
            "max_sparsity", default_ceiling if max_sparsity is None else max_sparsity, maximum=ceiling)
        target = self.sparsity if self.sparsity is not None else self.max_sparsity
        if schedule is None:
            schedule = CubicRamp(target, initial=_INITIAL[kind] if pattern_sparsity is None else 0.0)
        if not isinstance(schedule, SparsitySchedule):
            raise TypeError(
                "Invalid value for argument `schedule`: expected a "
                f"keras_regkit.shrinking.SparsitySchedule. Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.score = scores_lib.get(score)
        if guard is not None and not isinstance(guard, guards_lib.AgreementGuard):
            raise TypeError(
                "Invalid value for argument `guard`: expected a "
                f"keras_regkit.shrinking.AgreementGuard. Received: guard={guard!r}"
            )
        if guard is not None and reference_inputs is None:
            raise ValueError(
                "A `guard` needs `reference_inputs=` (the training inputs, or a sample of them), "
                "on which it compares the model with its start; `keras_regkit.shrink` passes `x`."
            )
        if guard is not None and self.mode_name == "sparsity":
            raise ValueError(
                "A `guard` takes part in the tolerance mode only (its levels must hold it); the "
                f"sparsity mode cuts to its target regardless. Received: guard={guard!r}")
        self.guard = guard
        self.levels = self._levels(levels)
        self.reference_inputs = _check_rereadable(reference_inputs, "reference_inputs")
        self.cut_every = _validate.integer("cut_every", cut_every, minimum=1)
        self.learning_rate_policy = LearningRatePolicy(learning_rate, self.mode_name)
        self.learning_rate = self.learning_rate_policy.learning_rate
        self.validation_data = _check_rereadable(validation_data, "validation_data")
        self.validation_steps = None if validation_steps is None else _validate.integer(
            "validation_steps", validation_steps, minimum=1)
        if self.validation_steps is None and data_lib.is_infinite(validation_data):
            raise ValueError(
                "Invalid value for argument `validation_data`: this dataset repeats forever, and "
                "the shrink reads its validation data to the end. Pass `validation_steps=` (how "
                "many batches to read), as to `fit`."
            )
        self.weights_spec = weights_lib.normalize_kinds(weights)
        weights_lib.check_selector(layers)
        self.layers = layers
        # Validates monitor and mode; measures only with validation data.
        self.check = guards_lib.ValidationCheck(self.tolerance or 0.0, monitor, mode)
        if self.mode_name == "tolerance" and self.validation_data is None:
            raise ValueError(
                "The tolerance mode needs `validation_data=` (arrays or a dataset with targets): "
                "each level it reaches is checked there against the starting model. Or give "
                "`sparsity=` for a target instead.")
        self.monitor, self.mode = monitor, mode
        if backup_dir is not None and (not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir)):
            raise TypeError(
                "Invalid value for argument `backup_dir`: expected a non-empty directory "
                "path (str or os.PathLike), e.g. the `backup_dir` of your "
                f"`keras.callbacks.BackupAndRestore`. Received: backup_dir={backup_dir!r}"
            )
        self.backup_dir = backup_dir
        self._state = None if backup_dir is None else PhaseState(backup_dir)
        self.verbose = _validate.integer("verbose", verbose)
        self._phase = "waiting"
        self.result = self._new_result()

    def _new_result(self) -> ShrinkResult:
        return ShrinkResult(
            self.mode_name, target=self.schedule.target, tolerance=self.tolerance,
            granularity=self.granularity, score=self.score.name)

    # -- fit hooks --------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._phase in _ACTIVE:
            self.abort()  # the last fit ended by an exception outside `with`
        self.result = self._new_result()
        self._phase = "waiting"
        self.trigger.reset()
        # Restored at the first epoch, once BackupAndRestore (wherever it is
        # in the list) has loaded its backup and set the epoch to go on from.
        self._pending_resume = bool(self._state and self._state.saved())
        epochs = self.params.get("epochs")
        if self.start_epoch is not None and epochs is not None and self.start_epoch >= epochs:
            warnings.warn(
                f"ShrinkPhase(start_epoch={self.start_epoch}) will not start: this fit runs epochs "
                f"0-{epochs - 1}. Give fit more epochs, or a smaller start_epoch.",
                stacklevel=2,
            )
        if self.start_epoch == 0 and not self._pending_resume:
            self._start(0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_resume:
            self._pending_resume = False
            if not self._resume(epoch) and self.start_epoch == 0:
                self._start(0)
        self._epoch_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._phase not in _ACTIVE:
            return
        self._step += 1
        self._epoch_steps += 1
        if self._phase == "ramping" and self._step % self.cut_every == 0:
            self.model  # noqa: B018 - under JAX, reading it syncs the weights mid-epoch
            self._check_and_cut()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._phase == "waiting":
            if self.trigger.starts_after(self.model, epoch, logs):
                self._start(epoch + 1)
        elif self._phase in _ACTIVE:
            if self._total_steps is None:  # fit did not know the epoch's length
                self._total_steps = self._epoch_steps * (self.params.get("epochs", epoch + 1) - self.result.started_at_epoch)
            # The sparsity mode's snapshot is its last good state; its host
            # copy of the weights serves the finiteness check too.
            current = self._snapshot() if self.mode_name == "sparsity" else None
            weights = current.weights if current else self.model.get_weights()
            loss = logs.get("loss")
            if (loss is not None and not math.isfinite(float(loss))) or not _finite(weights):
                self._rollback(f"Epoch {epoch + 1}: non-finite loss or weights")
            elif current:
                self._good = current
        if self._state is not None:
            self._save_state(epoch + 1)

    def on_train_end(self, logs=None):
        if self._pending_resume:
            # Resumed after its last epoch: interrupted while finishing.
            self._pending_resume = False
            self._resume(self.params.get("epochs", 0))
        if self._phase in _ACTIVE:
            self._finish()
        if self._state is not None:
            self._state.clear()

    # -- context manager: end at good weights on any exception -------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and self._phase in _ACTIVE:
            self.abort()
        return False

    def abort(self) -> None:
        """Ends the phase now at its last good weights: the held zeros are
        released and the learning rate restored."""
        self.model.set_weights(self._good.weights)
        hold_lib.release_zeros(self.model)
        self.learning_rate_policy.restore(self.model)
        self.result.outcome = "interrupted"
        self._conclude()
        self._say("shrink interrupted: back at its last good weights.")

    # -- the phase --------------------------------------------------------
    def _levels(self, levels) -> tuple[float, ...]:
        """The tolerance mode's candidate levels, rising, ending at
        `max_sparsity`."""
        if levels is None:
            levels = _LEVELS.get(self.granularity, _LEVELS["weight"])
        elif isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
            raise TypeError(
                "Invalid value for argument `levels`: expected a list of sparsities in (0, 1]. "
                f"Received: levels={levels!r}")
        else:
            levels = [_validate.real("levels", level, maximum=1.0) for level in levels]
        return tuple(sorted({level for level in levels if 0 < level < self.max_sparsity} | {self.max_sparsity}))

    def _begin(self, epoch: int) -> None:
        """What starting and resuming share: what is covered, the budget,
        the guard's reference (from the current, starting, weights)."""
        self._refs = cut_lib.select(self.model, self.layers, self.weights_spec, self.granularity)
        steps, epochs = self.params.get("steps"), self.params.get("epochs", epoch + 1)
        self._total_steps = steps * max(epochs - epoch, 1) if steps else None
        self._start_weights = self.model.get_weights()
        self._climb = Climb(self.levels, initial=self.schedule(0.0))
        if self.guard is not None:
            self.guard.start(self.model, self.reference_inputs)
        self.result.started_at_epoch = epoch

    def _start(self, epoch: int) -> None:
        # Everything that reads the user's data comes first: an error there
        # leaves the model and its optimizer as they were.
        if self.validation_data is not None:
            self.result.baseline = self._measure_start()
        self._begin(epoch)
        self.learning_rate_policy.apply(self.model)
        self._step = self._epoch_steps = 0
        self._phase = "ramping"
        self._good = self._snapshot()  # the state to go back to
        self._say(f"Epoch {epoch + 1}: shrink starts ({self.mode_name} mode).")
        self._check_and_cut()

    def _measure_start(self) -> float | None:
        baseline = self.check.start(self.model, self.validation_data, self.validation_steps,
                                    report_only=self.mode_name == "sparsity")
        self.result.monitor = self.check.name
        return baseline

    def _progress(self) -> float:
        return min(self._step / self._total_steps, 1.0) if self._total_steps else 0.0

    def _check_and_cut(self) -> None:
        if self.mode_name == "sparsity":
            sparsity = self.schedule(self._progress())
            if sparsity >= self.schedule.target:
                self._phase = "holding"  # the rest trains with these zeros
            self._cut_to(sparsity)
            return
        self._climb_step()

    def _climb_step(self) -> None:
        """The tolerance mode (see `climb`): at a pending level, wait while
        the model recovers, then one look at the labels decides: on to the
        next level, or back to the last that held, fine-tuned for the rest
        of the budget. Between levels, rise to the next."""
        climb = self._climb
        total = self._total_steps or max(self._step, 1)  # unknown in a first epoch of unknown length
        if climb.pending is not None:
            if climb.probation_until is not None:
                if self._progress() < climb.probation_until:
                    return
            elif climb.recovering(self.check.drift(self.model), self._step, total, self._progress()):
                return
            if not self._level_holds():
                if climb.probation(self._progress()):
                    # Checked before its fine-tune, a level looks worse than
                    # it ends: it trains on, and its second check decides.
                    self._say(f"Step {self._step}: {climb.pending:.2%} trains on to a second check.")
                    return
                failed = self.result.levels[-1][0]
                if climb.level == 0 and not climb.retried and self.learning_rate_policy.lower(self.model):
                    # The first level, at the raised rate: the rate is the
                    # suspect. The start is the only state to go back to.
                    self._rollback(f"Step {self._step}: {failed:.2%} fails its check")
                    climb.restart()
                    self._say(f"Step {self._step}: climbing again at the learning rate the model had.")
                    return
                self._end_ramp(f"Step {self._step}: {failed:.2%} fails its check")
                return
        if not climb.budget_left(self._progress()):
            if self._sparsity() > self._good.sparsity:
                # Cut on the way to a level that was never checked.
                self.result.stopped_at = self._progress()
                self._rollback(f"Step {self._step}: out of budget before {climb.target():.2%}")
            self._phase = "holding"  # the rest fine-tunes the last level that held
            return
        sparsity, arrived = climb.rise(self._step, total, self.cut_every)
        if arrived:
            sparsity = climb.target()
            climb.reach(sparsity, self._step)
        self._cut_to(sparsity)

    def _level_holds(self) -> bool:
        """Checks the pending level; if it holds it is the new state to go
        back to."""
        value, worse = self.check.measure(self.model)
        held = worse <= self.tolerance and (self.guard is None or self.guard.holds(self.model))
        self.result.levels.append((self._climb.pending, value, bool(held)))
        self._say(f"Step {self._step}: {self._climb.pending:.2%} zeros, {self.check.name} {value:.4g} "
                  f"({'holds' if held else 'fails'})")
        if held:
            self._good = self._snapshot()
            # A check of the user's own may not measure a gain: no skipping then.
            self._climb.held(ahead=getattr(self.check, "gain", 0.0) >= self.tolerance)
        return held

    def _end_ramp(self, why: str) -> None:
        """A level failed: back to the last that held, fine-tuned from
        here with its zeros fixed; if none did, back to the start and stop."""
        self._climb.pending = None
        self.result.stopped_at = self._progress()
        self._rollback(why)
        self._phase = "holding"
        if self._good.sparsity == 0:
            self.model.stop_training = True  # nothing to fine-tune: fit ends here

    def _sparsity(self) -> float:
        zeros, total = cut_lib.count_dead(self._refs, self.granularity)
        return zeros / total if total else 0.0

    def _reached(self, sparsity: float) -> bool:
        zeros, total = cut_lib.count_dead(self._refs, self.granularity)
        return zeros >= min(total, int(round(sparsity * total)))

    def _cut_to(self, sparsity: float) -> None:
        if self._reached(sparsity):
            return
        scores = self.score.scores(self._refs, self.model.optimizer)
        cut = cut_lib.cut(self._refs, scores, self.granularity, sparsity=sparsity)
        hold_lib.hold_zeros(self.model, [ref.variable for ref in self._refs])
        self.result.cuts += 1
        if cut.threshold is not None:
            self.result.threshold = max(cut.threshold, self.result.threshold or 0.0)

    def _snapshot(self) -> Snapshot:
        return Snapshot.take(self.model, self._step, self._sparsity())

    def _rollback(self, why: str) -> None:
        """Back to the last good state: its weights, zeros and optimizer
        slots."""
        self._good.restore(self.model, [ref.variable for ref in self._refs])
        self._climb.pending = None
        self.result.rollbacks += 1
        self._say(f"{why}: back to step {self._good.step}.")

    def _finish(self) -> None:
        if self.mode_name == "tolerance":
            if self._climb.pending is not None and not self._level_holds():
                self._end_ramp("End of the budget: the last level fails the check")
            elif self._good.sparsity > 0 and not self._final_holds():
                # Back to the last level as it passed its check.
                self._rollback("End of the budget: the final model fails the check")
            if self._good.sparsity == 0:
                self.model.set_weights(self._start_weights)
        else:
            self._cut_to(self.sparsity)  # exact, whatever the cadence left
        if self.mode_name == "tolerance" and self._good.sparsity == 0:
            self.result.outcome, self.result.threshold = "baseline", None
        else:
            self.result.outcome = "stopped by the check" if self.result.stopped_at is not None else "pruned"
        hold_lib.release_zeros(self.model)
        self.learning_rate_policy.restore(self.model)
        self._conclude()

    def _final_holds(self) -> bool:
        value, worse = self.check.measure(self.model)
        held = worse <= self.tolerance
        self._say(f"End of the budget: {self.check.name} {value:.4g} ({'holds' if held else 'fails'})")
        return held

    def _conclude(self) -> None:
        self.result.steps = self._step
        if self.validation_data is not None and self.check.data is not None:
            self.result.final = self.check.measure(self.model)[0]
        if self.guard is not None:
            self.result.disagreement = self.guard.disagreement(self.model)
        self.result.layers = stats.WeightStats(self.model, self.weights_spec).compute()
        zeros, total = cut_lib.count_dead(self._refs, "weight")
        self.result.sparsity = zeros / total if total else 0.0
        self.result.dead_units = units_lib.dead_units(self.model)
        if self.granularity in ("unit", "head"):
            dead, units = cut_lib.count_dead(self._refs, self.granularity)
            self.result.unit_sparsity = dead / units if units else 0.0
            self.result.sparsity = self.result.unit_sparsity
        self._phase = "done"
        if self.verbose:
            print(self.result)

    def _say(self, message):
        if self.verbose:
            print(message)

    # -- resuming with BackupAndRestore ------------------------------------
    def _save_state(self, epochs_done: int) -> None:
        numbers, snapshots = self.trigger.state()
        numbers.update(phase=self._phase, shapes=[list(v.shape) for v in self.model.weights])
        if self._phase != "waiting":
            snapshots.pop("best", None)
        if self._phase in _ACTIVE:
            numbers.update(step=self._step, total_steps=self._total_steps, good_step=self._good.step,
                           climb=self._climb.state(),
                           good_sparsity=self._good.sparsity,
                           **self.learning_rate_policy.state(self.model),
                           check_baseline=self.check.baseline, monitor=self.result.monitor,
                           result={name: getattr(self.result, name) for name in _RESULT_FIELDS})
            snapshots.update(start=self._start_weights, current=self.model.get_weights(),
                             good=self._good.weights, good_slots=self._good.slots)
            if self.check.start_hits is not None:
                snapshots["start_hits"] = [self.check.start_hits]
                snapshots["start_classes"] = [self.check.start_classes]
        self._state.save(epochs_done, numbers, snapshots)

    def _resume(self, epoch: int) -> bool:
        loaded = self._state.load(epoch)
        if loaded is None:
            return False
        state, snapshots, path = loaded
        shapes = [list(v.shape) for v in self.model.weights]
        if state["shapes"] != shapes:
            raise ValueError(
                f"ShrinkPhase cannot resume from {path}: it was written for a model with "
                f"weights of shapes {state['shapes']}, and this model's are {shapes}. Delete "
                "the backup, or pass the `backup_dir` of this model's own training."
            )
        if state["epochs_done"] < epoch:
            warnings.warn(
                f"ShrinkPhase resumes at epoch {epoch + 1} from its state after epoch "
                f"{state['epochs_done']}: list ShrinkPhase before BackupAndRestore in `callbacks` "
                "so that both save the same epoch.",
                stacklevel=2,
            )
        self.trigger.restore(state, snapshots)
        if state["phase"] in _ACTIVE:
            self.model.set_weights(snapshots["start"])
            self._begin(state["result"]["started_at_epoch"])
            for name in _RESULT_FIELDS:
                setattr(self.result, name, state["result"][name])
            self.result.levels = [tuple(check) for check in self.result.levels]
            self._step, self._total_steps = state["step"], state["total_steps"]
            self._epoch_steps = 0
            self._climb.restore(state["climb"])
            self.learning_rate_policy.resume(self.model, state)
            self._good = Snapshot(snapshots["good"], snapshots["good_slots"], state["good_step"],
                                   state["good_sparsity"])
            if self.validation_data is not None:
                self.result.monitor = state["monitor"]
                if self.result.monitor != self.check.name:  # the sparsity mode's fallback to the loss
                    self.check.monitor = self.result.monitor
                self.check.restore(self.validation_data, self.validation_steps, {
                    "baseline": state["check_baseline"],
                    "start_hits": snapshots["start_hits"][0] if "start_hits" in snapshots else None,
                    "start_classes": snapshots["start_classes"][0] if "start_classes" in snapshots else None})
            self.model.set_weights(snapshots["current"])
            hold_lib.hold_zeros(self.model, [ref.variable for ref in self._refs])
            self._phase = state["phase"]
        self._say(f"ShrinkPhase resumed from {path} ({state['phase']}).")
        return True


def _finite(weights: list) -> bool:
    return all(np.isfinite(w).all() for w in weights)


def _check_rereadable(data, name: str):
    """Refuses data that one reading would use up (the shrink reads its
    validation data twice, and `fit` reads the training inputs after the
    guard has sampled them)."""
    if data_lib.read_once(data):
        raise ValueError(
            f"Invalid value for argument `{name}`: an iterator or generator can be read only "
            "once, and the shrink would use it up (it reads its validation data at the start and "
            "at the end, and samples its reference inputs before `fit` reads them). Pass "
            "arrays, a tf.data.Dataset or a keras.utils.PyDataset. "
            f"Received: {name}={data!r}"
        )
    return data
