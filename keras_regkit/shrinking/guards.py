"""When the tolerance mode must stop: `ValidationCheck`, the test of each
level on validation data (top-1 sample by sample against the starting
model, or a compiled metric), and `AgreementGuard`, an optional label-free
condition on the training inputs.

Why validation inputs: inputs the model never trained on change the way
test inputs do, where agreement on memorised training inputs understates
the change by a factor that differs per model (about 3x on an MNIST subset,
under 1x on digits). The labels are read about once per level, in a fixed
order: a check consulted hundreds of times on a small labelled set keeps
the cuts that happened to hold there. Every count is summed over processes
first (`keras_regkit._processes.global_sum`).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._processes import global_sum
from keras_regkit.shrinking.data import check_validation_data, first_axis, non_finite, sample_inputs
from keras_regkit.shrinking.decisions import Verdict, judge
from keras_regkit.shrinking.evaluation import (
    accuracy, check_loss, class_top1, columns, compiled_metric, has_class_output, maximizes, predict,
    reason, top1, validation_hits)

class AgreementGuard:
    """Holds while the model's top-1 predictions on reference inputs agree
    with the starting model's on all but `max_disagreement` of them: an
    extra, label-free condition the tolerance mode's levels must meet, on
    top of the validation check, when given to `ToleranceClimb(guard=...)`.

    Args:
        max_disagreement: Largest fraction of reference inputs whose top-1
            class may differ from the starting model's, in [0, 1].
        samples: How many reference inputs to keep. Defaults to 4096.
        inputs: The reference inputs (training inputs, or a sample of
            them); `keras_regkit.shrink` passes its `x` when None.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> guard = rk.shrinking.AgreementGuard(max_disagreement=0.1)
    >>> guard.start(model, np.random.default_rng(0).normal(size=(100, 3)))
    >>> guard.disagreement(model), guard.holds(model)
    (0.0, True)
    """

    def __init__(self, max_disagreement: float, samples: int = 4096, inputs=None):
        self.max_disagreement = _validate.real("max_disagreement", max_disagreement, maximum=1.0)
        self.samples = _validate.integer("samples", samples, minimum=1)
        self.inputs = inputs
        self.reference = None

    def start(self, model: keras.Model, inputs=None) -> None:
        """Keeps up to `samples` of `inputs` (by default the `inputs` given
        at construction) and the model's top-1 on them."""
        inputs = self.inputs if inputs is None else inputs
        if inputs is None:
            raise ValueError(
                "An AgreementGuard needs reference inputs (the training inputs, or a sample of them), "
                "on which it compares the model with its start: `AgreementGuard(..., inputs=x)`; "
                "`keras_regkit.shrink` passes its `x`.")
        sample = sample_inputs(inputs, self.samples)
        invalid = ("Invalid value for argument `inputs` of AgreementGuard (the reference inputs; "
                   "`keras_regkit.shrink` passes its `x`): ")
        if first_axis(sample) == 0:
            raise ValueError(invalid + "they have no samples.")
        bad_inputs = non_finite(sample)
        if bad_inputs:
            # What a model predicts on NaN depends on the device's kernels (a fused ReLU may make it 0).
            raise ValueError(invalid + f"they are not all finite ({bad_inputs} NaN or inf entries).")
        try:
            outputs = predict(model, sample)
        except Exception as error:  # noqa: BLE001 - the model could not read them
            raise ValueError(invalid + f"the model could not be evaluated on them ({reason(error)}).") from error
        if not all(np.isfinite(output).all() for output in outputs):
            # NaN predictions all read as class 0: every later model would agree with them.
            raise ValueError(invalid + "the starting model's predictions on them are not all finite "
                             "(NaN or inf in the inputs?), so no change of its predictions could be seen.")
        self.inputs, self.reference = sample, class_top1(outputs)

    def disagreement(self, model: keras.Model) -> float:
        if self.reference is None:
            raise RuntimeError("AgreementGuard.start(model, inputs) must be called first.")
        changed = (top1(model, self.inputs) != self.reference).sum(axis=0)
        # Counted over every process's inputs; several class outputs: the
        # one that changed most.
        changed, count = np.split(global_sum(np.append(changed, len(self.reference))), [-1])
        return float(np.max(changed / count))

    def holds(self, model: keras.Model) -> bool:
        # NaN predictions argmax to 0 everywhere: they disagree, and fail.
        return self.disagreement(model) <= self.max_disagreement


def checked_guard(guard):
    """`guard` if it is an `AgreementGuard` or None; else a TypeError."""
    if guard is not None and not isinstance(guard, AgreementGuard):
        raise TypeError(
            "Invalid value for argument `guard`: expected a "
            f"keras_regkit.shrinking.AgreementGuard. Received: guard={guard!r}")
    return guard


# How many standard errors of the paired top-1 change a check forgives as
# noise: see `ValidationCheck`.
SLACK = 1.0


class ValidationCheck:
    """Whether a model is still within `tolerance` of where it started, on
    validation data: the tolerance mode's one test of a level.

    - `monitor=None`: top-1 accuracy of every class output, compared sample
      by sample with the starting model's; each class output may lose at
      most `tolerance` (absolute: 0.01 is one point).
    - `monitor="val_mae"` (any name `fit` logs for the validation data, with
      or without `val_`, of a metric the model was compiled with, or
      `"val_loss"`): computed with the model's own compiled metrics. A
      metric that rises as it improves (`mode="max"`, accuracy-like) may
      lose `tolerance` absolute; one that falls (`"min"`: losses, errors)
      may grow by `tolerance` times its starting value (0.05: 5 % worse).

    Counts and metric states are summed over every process before the
    decision, so each process decides the same.

    Args:
        tolerance: How much worse the metric may get, in [0, 1].
        monitor: None (top-1 accuracy) or a metric's log name.
        mode: `"auto"`, `"min"` or `"max"`: the direction of `monitor`.
        slack: For top-1: the accuracy lost counts only beyond this many
            standard errors of the paired change (a few samples that
            changed cannot tell a loss from noise). Defaults to `SLACK`.
        guard: Optional `AgreementGuard` that every verdict must also hold.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> check = rk.shrinking.ValidationCheck(tolerance=0.01)
    >>> baseline = check.start(model, (x, y))
    >>> check.holds(model)
    True
    """

    def __init__(self, tolerance: float, monitor: str | None = None, mode: str = "auto",
                 slack: float | None = None, guard: AgreementGuard | None = None):
        self.tolerance = _validate.real("tolerance", tolerance, maximum=1.0)
        self.slack = _validate.real("slack", SLACK if slack is None else slack)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"Invalid value for argument `monitor`: expected a str. Received: monitor={monitor!r}")
        if monitor == "" or monitor == "val_":
            raise ValueError("Invalid value for argument `monitor`: expected a validation log name such as "
                             f"'val_mae', or None for top-1 accuracy. Received: monitor={monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Invalid value for argument `mode`: expected 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if monitor is None and mode == "min":
            raise ValueError(
                "Invalid value for argument `mode`: without `monitor`, the check is top-1 accuracy, which "
                "rises as it improves; `mode` gives the direction of a `monitor=` metric. Received: mode='min'")
        self.monitor, self.mode, self.guard = monitor, mode, checked_guard(guard)
        self.data = None
        self.baseline = None  # the metric at the start
        self.start_hits = None  # top-1: per sample, at the start
        self.start_classes = None
        # How much better than at the start the last `measure` found the
        # model, beyond noise (the worst class output for top-1).
        self.gain = 0.0
        self._reading = None  # inside `one_reading`: what was read of the model there

    @property
    def name(self) -> str:
        return "top-1 accuracy" if self.monitor is None else "val_" + self.monitor.removeprefix("val_")

    # -- resuming ----------------------------------------------------------
    def get_state(self) -> dict:
        """What a resumed shrink needs: the start's metric, and for top-1
        its hits and classes per sample."""
        return {"monitor": self.monitor, "baseline": self.baseline,
                "start_hits": self.start_hits, "start_classes": self.start_classes}

    def set_state(self, state: dict, data=None) -> None:
        self.monitor, self.baseline = state["monitor"], state["baseline"]
        self.start_hits, self.start_classes = state["start_hits"], state["start_classes"]
        self.data = data

    def start(self, model: keras.Model, validation_data, report_only: bool = False) -> float:
        """Measures the starting model; raises ValueError if its own
        predictions or metric are not finite there (NaN in the inputs), or
        the model cannot read the data, or its targets or sample weights are
        not finite. `report_only` (the sparsity mode): a model without a
        class output is measured by its loss instead."""
        self.data = validation_data
        check_validation_data(validation_data)
        try:
            baseline = self._start(model, validation_data, report_only)
            # `fit`'s validation computes the loss: targets it cannot take fail here, not after steps.
            check_loss(model, validation_data)
            return baseline
        except Exception as error:  # noqa: BLE001 - the model could not read them
            if isinstance(error, ValueError) and ("`validation_data`" in str(error) or "`monitor`" in str(error)):
                raise  # ours, already naming the argument
            raise ValueError(
                "Invalid value for argument `validation_data`: the model could not be evaluated on "
                f"it ({reason(error)}). "
                "It must have the inputs and targets `fit` takes for this model.") from error

    def _start(self, model, validation_data, report_only):
        if self.monitor is None and report_only and not has_class_output(model, validation_data):
            self.monitor = "val_loss"
        if self.monitor is None:
            hits, weights, finite, self.start_classes = validation_hits(model, validation_data)
            if global_sum([0.0 if finite else 1.0])[0] > 0:  # on any process
                raise ValueError(
                    "Invalid value for argument `validation_data`: the starting model's predictions "
                    "on it are not all finite (NaN or inf in the validation inputs?), so no change "
                    "of accuracy could be measured there.")
            self.start_hits = np.stack([hits, weights])
            self.baseline = accuracy(hits, weights)
        else:
            self.baseline = compiled_metric(model, validation_data, self.monitor)
            if not np.isfinite(self.baseline):
                raise ValueError(
                    f"Invalid value for argument `validation_data`: the starting model's "
                    f"{self.name} on it is {self.baseline} (NaN or inf in the validation data?).")
        return self.baseline

    @contextlib.contextmanager
    def one_reading(self):
        """A block in which the model does not change: its validation data
        are run through it once, for every `drift` and `measure` there (a
        decision that finds a level recovered checks it at once, on the
        same predictions: one pass over the validation data, not two)."""
        self._reading = {}
        try:
            yield
        finally:
            self._reading = None

    def forget(self) -> None:
        """Inside `one_reading`: the model changed, read it again."""
        if self._reading is not None:
            self._reading.clear()

    def _read(self, what: str, read):
        if self._reading is None:
            return read()
        if what not in self._reading:
            self._reading[what] = read()
        return self._reading[what]

    def _hits(self, model):
        return self._read("hits", lambda: validation_hits(model, self.data))

    def _metric(self, model):
        return self._read("metric", lambda: compiled_metric(model, self.data, self.monitor))

    def measure(self, model: keras.Model) -> tuple[float, float]:
        """The metric now, and how much worse it is than at the start (in
        the tolerance's units; the worst class output for top-1)."""
        if self.data is None:
            raise RuntimeError("ValidationCheck.start(model, validation_data) must be called first.")
        if self.monitor is None:
            hits, weights, _, _ = self._hits(model)
            start_hits = self.start_hits[0]
            if hits.shape != start_hits.shape:
                raise ValueError(
                    "The shrink's validation data changed size between two readings "
                    f"({start_hits.shape[0]} then {hits.shape[0]} samples): it must give the same "
                    "samples in the same order each time (no shuffling).")
            hits, weights, start_hits = columns(hits, weights, start_hits)
            change = (start_hits - hits) * weights
            sums = global_sum(np.concatenate([(hits * weights).sum(axis=0), weights.sum(axis=0),
                                              change.sum(axis=0), np.square(change).sum(axis=0)]))
            right, total, lost, squares = np.split(sums, 4)
            # The paired change's standard error: only the samples whose
            # verdict changed carry evidence (McNemar's view). `slack` of
            # them are noise, not a loss.
            noise = self.slack * np.sqrt(squares) / total
            self.gain = float(np.min(-lost / total - noise))
            return float(np.mean(right / total)), float(np.max(lost / total - noise))
        value = self._metric(model)
        if maximizes(self.monitor, self.mode):
            worse = self.baseline - value
        else:
            worse = (value - self.baseline) / max(abs(self.baseline), 1e-12)
        self.gain = -worse
        return value, worse

    def start_guard(self, model: keras.Model) -> None:
        """Takes the guard's reference from the starting model, if there is a guard."""
        if self.guard is not None:
            self.guard.start(model)

    def verdict(self, model: keras.Model) -> Verdict:
        """The check's one verdict (`decisions.judge`): within the tolerance
        (beyond the noise `measure` allows for) and held by the guard, if
        any; ahead of the start by `decisions.SKIP_GAIN` or more."""
        value, worse = self.measure(model)
        # The guard is read only where the check itself holds (NaN fails it).
        held_by_guard = self.guard is None or not worse <= self.tolerance or self.guard.holds(model)
        return judge(value, worse, self.gain, self.tolerance, held_by_guard)

    def holds(self, model: keras.Model) -> bool:
        return self.verdict(model).held

    def drift(self, model: keras.Model) -> float:
        """How far the model is from the start without reading a label (for
        top-1): the fraction of validation inputs whose class changed, the
        worst class output. With a `monitor`, how much worse it is."""
        if self.monitor is not None:
            return self.measure(model)[1]
        _, _, _, classes = self._hits(model)
        changed = global_sum(np.concatenate([(classes != self.start_classes).sum(axis=0), [len(classes)]]))
        return float(np.max(changed[:-1] / changed[-1]))


