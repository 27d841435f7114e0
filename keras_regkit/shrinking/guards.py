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

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._processes import global_sum
from keras_regkit.shrinking.data import batches, first_axis, sample_inputs, take

_PREDICT_BATCH = 1024


def predict(model: keras.Model, inputs) -> list[np.ndarray]:
    """Each of the model's outputs (flattened as `keras.tree.flatten` orders
    them) on `inputs` (arrays), in inference mode, batch by batch. A direct
    call, not `predict`: under a multi-worker strategy each worker then
    computes its own copy, instead of gathering every worker's."""
    n = first_axis(inputs)
    parts = [
        [np.asarray(keras.ops.convert_to_numpy(o), dtype="float32")
         for o in keras.tree.flatten(model(take(inputs, slice(i, i + _PREDICT_BATCH)), training=False))]
        for i in range(0, n, _PREDICT_BATCH)
    ]
    return [np.concatenate(output) for output in zip(*parts)]


def _class_outputs(outputs: list[np.ndarray]) -> list[int]:
    """Which outputs have a class axis (2 or more on the last axis): the
    ones a top-1 class can be read from."""
    chosen = [i for i, o in enumerate(outputs) if o.ndim >= 2 and o.shape[-1] >= 2]
    if not chosen:
        raise ValueError(
            "The shrink's accuracy guard compares top-1 predictions, so the model needs an "
            "output with a class axis of 2 or more; this one gives shapes "
            f"{[o.shape for o in outputs]}. For other models, give `monitor=` a validation metric "
            "the model was compiled with (e.g. monitor='val_mae'), or use the sparsity mode "
            "(`sparsity=`)."
        )
    return chosen


def has_class_output(model: keras.Model, validation_data, steps: int | None = None) -> bool:
    """Whether the model gives a class axis on the first validation batch."""
    for x, _, _ in batches(validation_data, 1 if steps is None else min(steps, 1)):
        return any(o.ndim >= 2 and o.shape[-1] >= 2 for o in predict(model, x))
    return False


def top1(model: keras.Model, inputs) -> np.ndarray:
    """The top-1 class of each class output: shape `(samples, outputs)`."""
    outputs = predict(model, inputs)
    return np.stack([np.argmax(outputs[i], axis=-1).reshape(-1) for i in _class_outputs(outputs)], axis=-1)


def _per_output(model: keras.Model, outputs, tree, is_weight=False):
    """`tree` (targets or sample weights, as `fit` takes them) as a list
    aligned with the model's flattened `outputs`: one array for a
    one-output model (or a weight shared by all), a list in output order, or
    a dict keyed by output name. None where an output has none."""
    if tree is None or not isinstance(tree, (dict, list, tuple)):
        return [tree] * len(outputs)
    if isinstance(tree, dict):
        names = list(model.output_names)
        if isinstance(model.output, dict):
            names = sorted(model.output)  # keras.tree.flatten's order
        unknown, missing = set(tree) - set(names), set(names) - set(tree)
        if unknown or (missing and not is_weight):
            raise ValueError(
                "Invalid value for argument `validation_data`: its targets must be keyed by this "
                f"model's outputs {names}, one for each, as `fit` needs; "
                f"{'unknown: ' + str(sorted(unknown)) if unknown else 'missing: ' + str(sorted(missing))}."
            )
        return [tree.get(name) for name in names]
    tree = list(tree)
    if len(tree) != len(outputs):
        raise ValueError(
            f"Invalid value for argument `validation_data`: it has {len(tree)} "
            f"{'sample weights' if is_weight else 'targets'} for a model with {len(outputs)} outputs."
        )
    return tree


class AgreementGuard:
    """Holds while the model's top-1 predictions on reference inputs agree
    with the starting model's on all but `max_disagreement` of them: an
    extra, label-free condition the tolerance mode's levels must meet, on
    top of the validation check, when given to `ShrinkPhase(guard=...)`.

    Args:
        max_disagreement: Largest fraction of reference inputs whose top-1
            class may differ from the starting model's, in [0, 1].
        samples: How many reference inputs to keep. Defaults to 4096.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> guard = rk.shrinking.AgreementGuard(max_disagreement=0.1)
    >>> guard.start(model, np.random.default_rng(0).normal(size=(100, 3)))
    >>> guard.disagreement(model), guard.holds(model)
    (0.0, True)
    """

    def __init__(self, max_disagreement: float, samples: int = 4096):
        self.max_disagreement = _validate.real("max_disagreement", max_disagreement, maximum=1.0)
        self.samples = _validate.integer("samples", samples, minimum=1)
        self.inputs = None
        self.reference = None

    def start(self, model: keras.Model, inputs) -> None:
        """Keeps up to `samples` of `inputs` and the model's top-1 on them."""
        self.inputs = sample_inputs(inputs, self.samples)
        self.reference = top1(model, self.inputs)

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


def validation_hits(model: keras.Model, validation_data, steps: int | None = None):
    """Per sample of `validation_data` (`(x, y)` or `(x, y, sample_weight)`
    arrays, or a dataset of such batches, at most `steps` of them), and per
    class output of the model (columns, in `keras.tree.flatten` order):
    whether the top-1 class is right, and the sample's weight for that
    output (1 where none is given), as `fit` weighs `val_*accuracy`. Labels
    are class indices, or one-hot / probability rows. A prediction that is
    not finite is never right. Also returns whether every prediction was
    finite, and the predicted classes (the hits' shape)."""
    hits, weights, classes, finite = [], [], [], True
    for x, y, weight in batches(validation_data, steps):
        if y is None:
            raise ValueError("The shrink's validation data must carry targets: `(x, y)` batches.")
        outputs = predict(model, x)
        labels, sample_weights = _per_output(model, outputs, y), _per_output(model, outputs, weight, is_weight=True)
        columns = [i for i in _class_outputs(outputs) if labels[i] is not None]
        hit_columns, weight_columns, class_columns = [], [], []
        for i in columns:
            rows = outputs[i].reshape(-1, outputs[i].shape[-1])
            ok = np.isfinite(rows).all(axis=-1)
            finite = finite and bool(ok.all())
            predicted = np.argmax(rows, axis=-1)
            class_columns.append(np.where(ok, predicted, -1))
            label = np.asarray(labels[i])
            if label.ndim == outputs[i].ndim and label.shape[-1] > 1:
                label = np.argmax(label, axis=-1)
            hit_columns.append((predicted == label.reshape(-1)) & ok)
            weight_columns.append(np.ones(len(predicted)) if sample_weights[i] is None
                                  else np.asarray(sample_weights[i], "float64").reshape(-1))
        hits.append(np.stack(hit_columns, axis=-1).astype("float64"))
        weights.append(np.stack(weight_columns, axis=-1))
        classes.append(np.stack(class_columns, axis=-1))
    if not hits:
        raise ValueError("The shrink's validation data is empty.")
    hits, weights, classes = np.concatenate(hits), np.concatenate(weights), np.concatenate(classes)
    if (global_sum(weights.sum(axis=0)) <= 0).any():
        raise ValueError("The shrink's validation data has all its sample weights at 0.")
    return hits, weights, finite, classes


def _columns(*arrays):
    return [a.reshape(len(a), -1) for a in arrays]


def accuracy(hits: np.ndarray, weights: np.ndarray) -> float:
    """Weighted top-1 accuracy over every process's samples, as `fit`
    weighs `val_accuracy` (the mean over class outputs, when there are
    several)."""
    hits, weights = _columns(hits, weights)
    right, total = np.split(global_sum(np.concatenate([(hits * weights).sum(axis=0), weights.sum(axis=0)])), 2)
    return float(np.mean(right / total))


def maximizes(monitor: str, mode: str = "auto") -> bool:
    """Whether a higher `monitor` is better: `mode` `"max"`/`"min"`, or for
    `"auto"` an accuracy-like name (as Keras' `MonitorCallback` guesses)."""
    if mode != "auto":
        return mode == "max"
    name = monitor.removeprefix("val_")
    return any(key in name for key in ("acc", "auc", "precision", "recall", "f1"))


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
                 slack: float | None = None):
        self.tolerance = _validate.real("tolerance", tolerance, maximum=1.0)
        self.slack = _validate.real("slack", SLACK if slack is None else slack)
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"Invalid value for argument `monitor`: expected a str. Received: monitor={monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Invalid value for argument `mode`: expected 'auto', 'min' or 'max'. Received: mode={mode!r}")
        self.monitor, self.mode = monitor, mode
        self.data, self.steps = None, None
        self.baseline = None  # the metric at the start
        self.start_hits = None  # top-1: per sample, at the start
        self.start_classes = None
        # How much better than at the start the last `measure` found the
        # model, beyond noise (the worst class output for top-1).
        self.gain = 0.0

    @property
    def name(self) -> str:
        return "top-1 accuracy" if self.monitor is None else "val_" + self.monitor.removeprefix("val_")

    def restore(self, data, steps, state: dict) -> None:
        """Takes back what a resumed shrink saved: `baseline`, and for top-1
        `start_hits` and `start_classes`."""
        self.data, self.steps = data, steps
        self.baseline, self.start_hits = state["baseline"], state["start_hits"]
        self.start_classes = state["start_classes"]

    def start(self, model: keras.Model, validation_data, steps: int | None = None, report_only: bool = False) -> float:
        """Measures the starting model; raises ValueError if its own
        predictions or metric are not finite there (NaN in the inputs), or
        the model cannot read the data. `report_only` (the sparsity mode):
        a model without a class output is measured by its loss instead."""
        self.data, self.steps = validation_data, steps
        try:
            return self._start(model, validation_data, steps, report_only)
        except Exception as error:  # noqa: BLE001 - the model could not read them
            if isinstance(error, ValueError) and ("`validation_data`" in str(error) or "`monitor`" in str(error)):
                raise  # ours, already naming the argument
            raise ValueError(
                "Invalid value for argument `validation_data`: the model could not be evaluated on "
                f"it ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                "It must have the inputs and targets `fit` takes for this model.") from error

    def _start(self, model, validation_data, steps, report_only):
        if self.monitor is None and report_only and not has_class_output(model, validation_data, steps):
            self.monitor = "val_loss"
        if self.monitor is None:
            hits, weights, finite, self.start_classes = validation_hits(model, validation_data, steps)
            if global_sum([0.0 if finite else 1.0])[0] > 0:  # on any process
                raise ValueError(
                    "Invalid value for argument `validation_data`: the starting model's predictions "
                    "on it are not all finite (NaN or inf in the validation inputs?), so no change "
                    "of accuracy could be measured there.")
            self.start_hits = np.stack([hits, weights])
            self.baseline = accuracy(hits, weights)
        else:
            self.baseline = compiled_metric(model, validation_data, steps, self.monitor)
            if not np.isfinite(self.baseline):
                raise ValueError(
                    f"Invalid value for argument `validation_data`: the starting model's "
                    f"{self.name} on it is {self.baseline} (NaN or inf in the validation data?).")
        return self.baseline

    def measure(self, model: keras.Model) -> tuple[float, float]:
        """The metric now, and how much worse it is than at the start (in
        the tolerance's units; the worst class output for top-1)."""
        if self.data is None:
            raise RuntimeError("ValidationCheck.start(model, validation_data) must be called first.")
        if self.monitor is None:
            hits, weights, _, _ = validation_hits(model, self.data, self.steps)
            start_hits = self.start_hits[0]
            if hits.shape != start_hits.shape:
                raise ValueError(
                    "The shrink's validation data changed size between two readings "
                    f"({start_hits.shape[0]} then {hits.shape[0]} samples): it must give the same "
                    "samples in the same order each time (no shuffling).")
            hits, weights, start_hits = _columns(hits, weights, start_hits)
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
        value = compiled_metric(model, self.data, self.steps, self.monitor)
        if maximizes(self.monitor, self.mode):
            worse = self.baseline - value
        else:
            worse = (value - self.baseline) / max(abs(self.baseline), 1e-12)
        self.gain = -worse
        return value, worse

    def holds(self, model: keras.Model) -> bool:
        # NaN compares False: a model gone non-finite fails.
        return bool(self.measure(model)[1] <= self.tolerance)

    def drift(self, model: keras.Model) -> float:
        """How far the model is from the start without reading a label (for
        top-1): the fraction of validation inputs whose class changed, the
        worst class output. With a `monitor`, how much worse it is."""
        if self.monitor is not None:
            return self.measure(model)[1]
        _, _, _, classes = validation_hits(model, self.data, self.steps)
        changed = global_sum(np.concatenate([(classes != self.start_classes).sum(axis=0), [len(classes)]]))
        return float(np.max(changed[:-1] / changed[-1]))


def compiled_metric(model: keras.Model, validation_data, steps: int | None, monitor: str) -> float:
    """`monitor` (a log name, `val_` optional) on the validation data, with
    the model's own compiled metrics (their state is put back after), or
    its loss for `"loss"`; over every process's data."""
    name = monitor.removeprefix("val_")
    if name == "loss":
        total = count = 0.0
        for x, y, weight in batches(validation_data, steps):
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), sample_weight=weight,
                                      training=False)
            n = first_axis(x)
            total += float(keras.ops.convert_to_numpy(loss)) * n
            count += n
        total, count = global_sum([total, count])
        return float(total / count)
    metrics = next((m for m in model.metrics if m.name == "compile_metrics"), None)
    if metrics is None:
        raise ValueError(
            f"Invalid value for argument `monitor`: {monitor!r} needs the model to be compiled with "
            "that metric (`model.compile(..., metrics=[...])`); it has no compiled metrics.")
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in metrics.variables]
    try:
        metrics.reset_state()
        for x, y, weight in batches(validation_data, steps):
            metrics.update_state(y, model(x, training=False), weight)
        variables = metrics.variables
        # Keras' metrics keep sums and counts: summed over processes, they
        # are the metric of all the data.
        values = [np.asarray(keras.ops.convert_to_numpy(v), "float64") for v in variables]
        flat = global_sum(np.concatenate([v.reshape(-1) for v in values])) if values else []
        offset = 0
        for variable, value in zip(variables, values):
            variable.assign(np.reshape(flat[offset:offset + value.size], value.shape).astype(variable.dtype))
            offset += value.size
        results = {key: float(keras.ops.convert_to_numpy(v)) for key, v in metrics.result().items()}
    finally:
        for variable, value in zip(metrics.variables, saved):
            variable.assign(value)
    if name not in results:
        raise ValueError(
            f"Invalid value for argument `monitor`: the model logs no {monitor!r} on validation data. "
            f"Valid: {sorted('val_' + key for key in [*results, 'loss'])}")
    return results[name]
