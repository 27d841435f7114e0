"""`ShrinkPhase`: the callback that runs a shrink policy inside `fit`.

At `start_epoch` (or on a `Plateau` of a metric, with the best weights
restored) the shrink sets its learning rate, makes a first cut and then
asks its policy every `cut_every` training steps (and at the end, where
the last step's decision is the final one) where to go: cut further,
wait, check the model on the validation data, hold, or go back to the last
good state (see `decisions`). Cuts rank every covered weight together by
the policy's score (`|w| · v^(1/4)`, with `v` the optimizer's second moment)
and zero the lowest (`keras_regkit.pruning.cut`); the zeros are held after
every train step (`pruning.hold.for_fit`: masks after each call of the step
Keras traced, or constraints inside it), so they are exact, and the training
between cuts recovers. At the end they are released and the rate put back.

The shrink never leaves the model worse than where it can go back to: a
non-finite loss rolls back to the last good state (the last epoch's end for
a policy that trusts them, else the last level a check passed), and `fit`
ended by an exception ends at the last good state (weights, optimizer slots
and step count) when the phase is used as a context manager (as
`keras_regkit.shrink` does).

With `backup_dir` (BackupAndRestore's own is fine) the phase saves its
state every epoch (`state`), and deletes it when `fit` ends normally.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning.select import host_view
from keras_regkit.quantization import training as int8_training
from keras_regkit.shrinking import data as data_lib
from keras_regkit.shrinking import decisions
from keras_regkit.shrinking import distill as distill_lib
from keras_regkit.shrinking.guards import ValidationCheck
from keras_regkit.shrinking.learning_rate import LearningRatePolicy
from keras_regkit.shrinking.batch_norm import StatisticsPace
from keras_regkit.shrinking.policies import ShrinkPolicy, policy_for
from keras_regkit.shrinking.result import ShrinkResult
from keras_regkit.shrinking.snapshots import Snapshot
from keras_regkit.shrinking.state import PhaseState
from keras_regkit.shrinking.trigger import StartTrigger

_ACTIVE = ("ramping", "holding")


class ShrinkPhase(keras.callbacks.Callback):
    """Makes a trained model sparse inside `fit`: gradual pruning to exact
    zeros, to a sparsity you choose or as far as an accuracy tolerance allows.

    - **`sparsity=0.98`** (`SparsityTarget`): ends with exactly that
      fraction of exact zeros, along a cubic ramp.
    - **`tolerance=0.01`** (`ToleranceClimb`, the default): climbs fixed
      levels (80 ... 99.5 % of entries) while the checked metric stays
      within `tolerance` of the start, and ends at the last that held.
    - **`policy=`**: either with expert settings, or your own `ShrinkPolicy`.

    How a shrink runs: see the module's docstring. Used as a context
    manager, an exception that ends `fit` leaves the last good weights (and
    the optimizer state that went with them):

    ```python
    with ShrinkPhase(start_epoch=20, sparsity=0.95) as phase:
        model.fit(x, y, epochs=30, callbacks=[phase])
    print(phase.result)
    ```

    Args:
        start_epoch: The epoch the shrink starts at, or a `Plateau`.
        sparsity: Target fraction of exact zeros: `SparsityTarget(sparsity)`.
        tolerance: How much worse the checked metric may get:
            `ToleranceClimb(tolerance, monitor=monitor)`; 0.01 by default.
        policy: A `ShrinkPolicy`, instead of `sparsity` or `tolerance`.
        validation_data: `(x, y[, sample_weight])` arrays, a dataset or a
            `keras.utils.PyDataset` (the same samples at each reading; not
            an iterator): the checks, `result.baseline` and `result.final`.
        monitor: The checked metric's validation log name (`"val_mae"`);
            top-1 accuracy when None.
        granularity: `"weight"`, `"unit"` (units, filters, and the heads of
            attention layers), `"head"`, `"block"` (whole transformer or
            residual blocks, sparsity in blocks; `pruning.Blocks` to score
            them on calibration data), `"N:M"` (e.g. `"2:4"`), or a
            `keras_regkit.pruning.Granularity` (which names the weight kinds
            it covers: `Weights(["kernel", "bias"])`).
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.
        backup_dir: Where to save the phase's state, so that a `fit` run
            again with `keras.callbacks.BackupAndRestore` goes on.
        verbose: 1 prints each decision and the result.
        distill: Adds to each training step's loss how far the model's
            predictions are from the starting model's (KL divergence;
            see `distill`): `"auto"` (the default: on in the sparsity
            mode at a target of 97 % or more, where it helped on the
            benchmarks, without `int8`; off otherwise), False, True
            (weight `distill.DEFAULT_WEIGHT`) or the weight, a float > 0.
        int8: True: the shrink trains, checks and reports the model through
            full int8 rounding (`keras_regkit.quantization`), as
            `export(int8=True)` will quantize it; the checks compare it with
            the float model it started from.
        representative_data: With `int8`: inputs like the model's, from
            which the activations' ranges are set (give `export` the same).

    Raises:
        ValueError, TypeError: For bad arguments, at construction.

    References:
        Zhu & Gupta, "To prune, or not to prune", 2017 (gradual pruning);
        LeCun et al., "Optimal Brain Damage", NeurIPS 1989 (the score).
    """

    def __init__(self, start_epoch=None, sparsity: float | None = None, tolerance: float | None = None,
                 policy: ShrinkPolicy | None = None, validation_data=None, monitor: str | None = None,
                 granularity="weight", layers="*", backup_dir=None, verbose: int = 0, distill="auto",
                 int8: bool = False, representative_data=None):
        super().__init__()
        if start_epoch is None:
            raise ValueError("ShrinkPhase needs `start_epoch`: an epoch, or a `Plateau` to start on a "
                             "metric's plateau. Received: start_epoch=None")
        if isinstance(start_epoch, type) and issubclass(start_epoch, StartTrigger):
            raise TypeError(f"Invalid value for argument `start_epoch`: expected an epoch or a {start_epoch.__name__} "
                            f"instance, e.g. Plateau(patience=3). Received the class: start_epoch={start_epoch!r}")
        self.trigger = start_epoch if isinstance(start_epoch, StartTrigger) else StartTrigger(start_epoch)
        self.start_epoch = self.trigger.start_epoch
        self.granularity = granularity_lib.get(granularity)
        self.policy = policy_for(sparsity, tolerance, policy, monitor)
        self.policy.bind(self.granularity)
        # The checks' verdicts, or what `result.baseline` and `final` report.
        self.check = self.policy.check or ValidationCheck(0.0, monitor)
        self.validation_data = data_lib.shrink_validation_data(validation_data, self.policy)
        weights_lib.check_selector(layers)
        self.layers, self.backup_dir = layers, backup_dir
        self._state = None if backup_dir is None else PhaseState(backup_dir)
        self.verbose = _validate.integer("verbose", verbose)
        self.distill = distill_lib.Distillation(distill, self.policy, int8 is True)
        self.rate = LearningRatePolicy(self.policy.learning_rate)
        self.statistics = StatisticsPace()  # BatchNormalization's, following the cuts
        self.int8 = int8_training.for_shrink(int8, representative_data)
        self._phase = "waiting"
        self.result = self._new_result()

    def _new_result(self) -> ShrinkResult:
        return ShrinkResult(self.policy.name, self.policy.target, getattr(self.policy, "tolerance", None),
                            granularity=str(self.granularity), score=self.policy.score.name)

    # -- fit hooks --------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._phase in _ACTIVE:
            self.abort()  # the last fit ended by an exception outside `with`
        self.result, self._phase = self._new_result(), "waiting"
        self.trigger.reset()
        # Resumed at the first epoch, once BackupAndRestore has loaded its backup.
        self._pending_resume = bool(self._state and self._state.saved())
        epochs = self.params.get("epochs")
        if self.start_epoch is not None and epochs is not None and self.start_epoch >= epochs:
            warnings.warn(f"ShrinkPhase(start_epoch={self.start_epoch}) will not start: this fit runs epochs "
                          f"0-{epochs - 1}. Give fit more epochs, or a smaller start_epoch.", stacklevel=2)
        if self.start_epoch == 0 and not self._pending_resume:
            self._start(0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_resume:
            self._pending_resume = False
            if not self._resume(epoch) and self.start_epoch == 0:
                self._start(0)
        if self.int8 and self._phase in _ACTIVE:
            self.int8.calibrate()  # the weights moved: the converter's ranges too
        self._epoch_steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._phase in _ACTIVE:  # the step about to run is the held one
            self._hold.keep_in_step()

    def on_train_batch_end(self, batch, logs=None):
        if self._phase not in _ACTIVE:
            return
        self._step += 1
        self._epoch_steps += 1
        # The budget's last step is decided once, by the final decision
        # (`on_train_end`): a decision here too would check the same weights twice.
        last = self._step == self._total_steps
        if self._phase == "ramping" and self._step % self.policy.cut_every == 0 and not last:
            self.model  # noqa: B018 - under JAX, reading it syncs the weights mid-epoch
            self._decide()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._phase == "waiting":
            if self.trigger.starts_after(self.model, epoch, logs):
                self._start(epoch + 1)
        elif self._phase in _ACTIVE:
            if self._total_steps is None:  # fit did not know the epoch's length: now it does
                self._total_steps = self._epoch_steps * (self.params.get("epochs", epoch + 1) - self.result.started_at_epoch)
            # A snapshot taken is a good state; its weights serve the check too.
            current = self._snapshot() if self.policy.trusts_epoch_ends else None
            weights = current.weights if current else [host_view(v.value) for v in self.model.weights]
            if not _finite(logs.get("loss"), weights):
                self._spare = current or self._spare
                self._rollback(f"Epoch {epoch + 1}: non-finite loss or weights")
            elif current:
                self._keep_good(current)
        if self._state is not None:
            self._save_state(epoch + 1)

    def on_train_end(self, logs=None):
        if self._pending_resume:  # resumed after its last epoch: interrupted while finishing
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

    def abort(self) -> None:
        """Ends the phase now at its last good state (weights, optimizer
        slots and step count), zeros released, rate restored."""
        self._good.restore(self.model, rewind=True)
        self.statistics.restore(self.model)
        self._hold.release()
        self.rate.restore(self.model)
        self.result.outcome = "interrupted"
        self._conclude()
        self._say("shrink interrupted: back at its last good weights.")

    # -- the shrink ---------------------------------------------------------
    def _begin(self, epoch: int) -> None:
        """What starting and resuming share: the coverage, the budget, the guard."""
        if self.int8:
            self.int8.start(self.model)
        self._refs = self.granularity.select(self.model, self.layers)
        steps, epochs = self.params.get("steps"), self.params.get("epochs", epoch + 1)
        self._total_steps = steps * max(epochs - epoch, 1) if steps else None
        # Kept only where a check's "baseline" outcome or a backup needs it: a
        # copy of every weight is fresh memory, slow to fault in for a large model.
        needed = self.policy.check is not None or self._state is not None
        self._start_weights = self.model.get_weights() if needed else None
        self._spare = None  # a replaced good state's arrays, for the next snapshot
        self.policy.begin()
        self.check.start_guard(self.model)
        self.result.started_at_epoch = epoch

    def _start(self, epoch: int) -> None:
        # Reading the user's data first: an error there changes nothing.
        if self.validation_data is not None:
            self.result.baseline = self.check.start(self.model, self.validation_data,
                                                    report_only=self.policy.check is None)
            self.result.monitor = self.check.name
        self._begin(epoch)
        self.rate.apply(self.model)
        self.statistics.apply(self.model)
        self.distill.attach(self.model)  # the model as it starts is the teacher
        self._choose_hold()
        self._step = self._epoch_steps = 0
        self._phase = "ramping"
        self._good = self._snapshot()  # the state to go back to
        self._say(f"Epoch {epoch + 1}: shrink starts ({self.policy.name} mode).")
        self._decide()

    def _choose_hold(self) -> None:  # once the loss and layers are set: did they make Keras trace the step again?
        traced = bool(self.statistics.user_momentum) or self.distill.attached or bool(self.int8)
        self._hold = hold_lib.for_fit(self.model, [ref.variable for ref in self._refs], self._total_steps, traced)

    def _observe(self, final: bool = False) -> decisions.Observation:
        self._counts = self.granularity.count_dead(self._refs)
        zeros, total = self._counts
        return decisions.Observation(
            step=self._step, total_steps=self._total_steps or max(self._step, 1),  # unknown in a first epoch
            progress=min(self._step / self._total_steps, 1.0) if self._total_steps else 0.0,
            sparsity=zeros / total if total else 0.0, good_sparsity=self._good.sparsity,
            rate_raised=self.rate.raised(self.model), final=final,
            drift=self.check.drift(self.model) if self.policy.needs_drift() and not final else None,
            budget_known=self._total_steps is not None)

    def _decide(self, final: bool = False) -> None:
        """Asks the policy, runs the checks it asks for, and acts."""
        with self.check.one_reading():  # nothing changes the model until `_act`
            seen = self._observe(final)
            action = self.policy.decide(seen)
            while action.kind == decisions.CHECK:
                seen, action = self._check(action, final)
        self._act(action, seen)

    def _check(self, action: decisions.Action, final: bool):
        """Runs the check `action` asks for; the policy's next observation and answer."""
        if self.int8:
            self.int8.calibrate()
            self.check.forget()  # new ranges: the simulated int8 model reads differently
        verdict = self.check.verdict(self.model)
        level = action.sparsity
        if level is not None:  # a level's check; else the model as it is, at the end
            self.result.levels.append((level, verdict.value, verdict.held))
            if verdict.held:
                self._keep_good(self._snapshot())
        self._say(f"Step {self._step}: {'' if level is None else f'{level:.2%} zeros, '}{self.check.name} "
                  f"{verdict.value:.4g} ({'holds' if verdict.held else 'fails'})")
        seen = self._observe(final)
        return seen, self.policy.checked(seen, verdict)

    def _act(self, action: decisions.Action, seen: decisions.Observation) -> None:
        if action.kind == decisions.RISE:
            self._cut_to(action.sparsity)
            if action.last:
                self._phase = "holding"  # the rest trains with these zeros
        elif action.kind == decisions.HOLD:
            self._phase = "holding"  # the rest fine-tunes these zeros
        elif action.kind == decisions.WAIT:
            self._say(f"Step {self._step}: {action.reason}." if action.reason else "")
        else:  # back to the last good state
            if action.stopped:
                self.result.stopped_at = seen.progress
            self._rollback(f"Step {self._step}: {action.reason}")
            if action.kind == decisions.RESTART:
                self.rate.lower(self.model)
                self._say(f"Step {self._step}: climbing again at the learning rate the model had.")
            else:
                self._phase = "holding"
            if action.kind == decisions.STOP:
                self.model.stop_training = True  # nothing to fine-tune: fit ends here

    def _cut_to(self, sparsity: float) -> None:
        zeros, total = self._counts  # as observed: no cut since
        if zeros >= min(total, int(round(sparsity * total))):
            return
        scores = scores_lib.for_cut(self.policy.score, self._refs, self.model.optimizer)  # on the device
        cut = cut_lib.cut(self._refs, scores, self.granularity, sparsity=sparsity)
        self._hold.update()
        self.result.cuts += 1
        if cut.threshold is not None:
            self.result.threshold = max(cut.threshold, self.result.threshold or 0.0)

    def _snapshot(self) -> Snapshot:
        """The state now, in the arrays of the good state replaced last
        (`_spare`), if any."""
        zeros, total = self.granularity.count_dead(self._refs)
        spare, self._spare = self._spare, None
        return Snapshot.take(self.model, self._step, zeros / total if total else 0.0, reuse=spare)

    def _keep_good(self, snapshot: Snapshot) -> None:
        """`snapshot` is the state to go back to; the one it replaces lends
        its arrays to the next snapshot."""
        self._good, self._spare = snapshot, self._good

    def _rollback(self, why: str) -> None:
        """Back to the last good state: its weights, zeros and optimizer slots."""
        self._good.restore(self.model)
        self._hold.update()  # the good state's zeros
        self.policy.rolled_back()
        self.result.rollbacks += 1
        self._say(f"{why}: back to step {self._good.step}.")

    def _finish(self) -> None:
        self._decide(final=True)
        if self.policy.check is not None and self._good.sparsity == 0:  # no level held
            self.model.set_weights(self._start_weights)
            self.result.outcome, self.result.threshold = "baseline", None
        else:
            self.result.outcome = "stopped by the check" if self.result.stopped_at is not None else "pruned"
        self.statistics.finish(self.model, refresh=self.result.outcome != "baseline", int8=self.int8)
        self._hold.release()
        self.rate.restore(self.model)
        self._conclude()

    def _conclude(self) -> None:
        self._spare = None  # memory a finished shrink no longer needs
        self.distill.detach()  # the model's own loss again
        self.result.measure_end(self.model, self._refs, self.granularity, self.check, self._step)
        if self.int8:
            self.int8.stop()  # the float model again
        self._phase = "done"
        if self.verbose:
            print(self.result)

    def _say(self, message):
        if self.verbose and message:
            print(message)

    # -- resuming with BackupAndRestore ------------------------------------
    def _save_state(self, epochs_done: int) -> None:
        parts = {"phase": {"phase": self._phase, "shapes": [list(v.shape) for v in self.model.weights]},
                 "trigger": self.trigger.get_state() if self._phase == "waiting" else {}}
        if self._phase in _ACTIVE:
            parts["phase"].update(step=self._step, total_steps=self._total_steps, start=self._start_weights,
                                  current=self.model.get_weights())
            parts.update(good=self._good.get_state(), policy=self.policy.get_state(), rate=self.rate.get_state(self.model),
                         check=self.check.get_state(), result=self.result.get_state())
        self._state.save(epochs_done, parts)

    def _resume(self, epoch: int) -> bool:
        loaded = self._state.load(epoch, [list(v.shape) for v in self.model.weights])
        if loaded is None:
            return False
        parts, path = loaded
        saved = parts["phase"]
        if parts["trigger"]:
            self.trigger.set_state(parts["trigger"])
        if saved["phase"] in _ACTIVE:
            self.model.set_weights(saved["start"])
            self._begin(parts["result"]["started_at_epoch"])
            self.distill.attach(self.model)
            self.result.set_state(parts["result"])
            self._step, self._total_steps, self._epoch_steps = saved["step"], saved["total_steps"], 0
            self.policy.set_state(parts["policy"])
            self.rate.set_state(self.model, parts["rate"])
            self.statistics.apply(self.model)
            self._good = Snapshot.from_state(parts["good"])
            self.check.set_state(parts["check"], self.validation_data)
            self.model.set_weights(saved["current"])
            self._choose_hold()
            self._hold.update()
        self._phase = saved["phase"]
        self._say(f"ShrinkPhase resumed from {path} ({saved['phase']}).")
        return True


def _finite(loss, weights: list) -> bool:
    return (loss is None or math.isfinite(float(loss))) and all(np.isfinite(w).all() for w in weights)
