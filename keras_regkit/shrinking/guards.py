"""When the shrink must stop: agreement with the starting model, and the one
check on validation data at the end.

Why agreement: over 189 shrink runs, the change in top-1 agreement with the
starting model on the training inputs predicted the change in test accuracy
with r = 0.90, the change in validation accuracy with r = 0.51. Agreement
needs no labels, so it can use thousands of inputs, and it is never
selected on: a guard consulted hundreds of times on a small labelled set
keeps the cuts that happened to hold there.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit.shrinking.data import first_axis, take, batches, sample_inputs

# The guard's limit on disagreement per unit of the user's accuracy
# tolerance. A changed prediction moves accuracy by at most one sample, so 1
# would bound the accuracy change on the reference inputs by the tolerance;
# but unseen inputs change more than the training inputs a model has
# memorised. Calibrated on benchmarks/bench_shrink_quality.py (5 seeds,
# benchmarks/shrink_tolerance_calibration_*.json): on digits 1.0 lost
# 1.11 / 2.23 points (median / worst) at tolerance 0.01, 0.75 1.95 at
# worst, 0.5 0.84 / 1.11, the one that kept the promise at 0.01 and 0.02.
DISAGREEMENT_PER_TOLERANCE = 0.5
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
            f"{[o.shape for o in outputs]}. Use the sparsity mode (`sparsity=`) for other models."
        )
    return chosen


def top1(model: keras.Model, inputs) -> np.ndarray:
    """The top-1 class of each class output: shape `(samples, outputs)`."""
    outputs = predict(model, inputs)
    return np.stack([np.argmax(outputs[i], axis=-1).reshape(-1) for i in _class_outputs(outputs)], axis=-1)


def _per_output(model: keras.Model, outputs, tree):
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
        unknown = set(tree) - set(names)
        if unknown:
            raise ValueError(
                f"The shrink's validation data names outputs {sorted(unknown)}, which this model "
                f"does not have; its outputs are {names}."
            )
        return [tree.get(name) for name in names]
    tree = list(tree)
    if len(tree) != len(outputs):
        raise ValueError(
            f"The shrink's validation data has {len(tree)} targets (or weights) for a model with "
            f"{len(outputs)} outputs."
        )
    return tree


class AgreementGuard:
    """Holds while the model's top-1 predictions on reference inputs agree
    with the starting model's on all but `max_disagreement` of them.

    Args:
        max_disagreement: Largest fraction of reference inputs whose top-1
            class may differ from the starting model's, in [0, 1].
        samples: How many reference inputs to keep. Defaults to 4096.
        patience: Failing checks in a row that the shrink waits out (no
            cut, training goes on) before it stops the ramp and goes back to
            the last check that held: right after a large cut, a few more
            steps often recover. Defaults to 1.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> guard = rk.shrinking.AgreementGuard(max_disagreement=0.1)
    >>> guard.start(model, np.random.default_rng(0).normal(size=(100, 3)))
    >>> guard.disagreement(model), guard.holds(model)
    (0.0, True)
    """

    def __init__(self, max_disagreement: float, samples: int = 4096, patience: int = 1):
        self.max_disagreement = _validate.real("max_disagreement", max_disagreement, maximum=1.0)
        self.samples = _validate.integer("samples", samples, minimum=1)
        self.patience = _validate.integer("patience", patience)
        self.inputs = None
        self.reference = None

    def start(self, model: keras.Model, inputs) -> None:
        """Keeps up to `samples` of `inputs` and the model's top-1 on them."""
        self.inputs = sample_inputs(inputs, self.samples)
        self.reference = top1(model, self.inputs)

    def disagreement(self, model: keras.Model) -> float:
        if self.reference is None:
            raise RuntimeError("AgreementGuard.start(model, inputs) must be called first.")
        # Several class outputs: the one that changed most.
        return float(np.max(np.mean(top1(model, self.inputs) != self.reference, axis=0)))

    def holds(self, model: keras.Model) -> bool:
        # NaN predictions argmax to 0 everywhere: they disagree, and fail.
        return self.disagreement(model) <= self.max_disagreement


def validation_hits(model: keras.Model, validation_data, steps: int | None = None):
    """Per sample of `validation_data` (`(x, y)` or `(x, y, sample_weight)`
    arrays, or a dataset of such batches, at most `steps` of them), and per
    class output of the model (columns, in `keras.tree.flatten` order):
    whether the top-1 class is right, and the sample's weight for that
    output (1 where none is given), as `fit` weighs `val_*accuracy`. Labels
    are class indices, or one-hot / probability rows."""
    hits, weights = [], []
    for x, y, weight in batches(validation_data, steps):
        if y is None:
            raise ValueError("The shrink's validation data must carry targets: `(x, y)` batches.")
        outputs = predict(model, x)
        labels, sample_weights = _per_output(model, outputs, y), _per_output(model, outputs, weight)
        columns = [i for i in _class_outputs(outputs) if labels[i] is not None]
        hit_columns, weight_columns = [], []
        for i in columns:
            predicted = np.argmax(outputs[i], axis=-1).reshape(-1)
            label = np.asarray(labels[i])
            if label.ndim == outputs[i].ndim and label.shape[-1] > 1:
                label = np.argmax(label, axis=-1)
            hit_columns.append(predicted == label.reshape(-1))
            weight_columns.append(np.ones(len(predicted)) if sample_weights[i] is None
                                  else np.asarray(sample_weights[i], "float64").reshape(-1))
        hits.append(np.stack(hit_columns, axis=-1).astype("float64"))
        weights.append(np.stack(weight_columns, axis=-1))
    if not hits:
        raise ValueError("The shrink's validation data is empty.")
    hits, weights = np.concatenate(hits), np.concatenate(weights)
    if (weights.sum(axis=0) <= 0).any():
        raise ValueError("The shrink's validation data has all its sample weights at 0.")
    return hits, weights


def _columns(*arrays):
    return [a.reshape(len(a), -1) for a in arrays]


def accuracy(hits: np.ndarray, weights: np.ndarray) -> float:
    """Weighted top-1 accuracy, as `fit` weighs `val_accuracy` (the mean
    over class outputs, when there are several)."""
    hits, weights = _columns(hits, weights)
    return float(np.mean((hits * weights).sum(axis=0) / weights.sum(axis=0)))


# One-sided 95 % normal quantile.
_Z = 1.645


def drop_exceeds(start_hits: np.ndarray, final_hits: np.ndarray, weights: np.ndarray, tolerance: float) -> bool:
    """Whether the validation data show that accuracy fell by more than
    `tolerance`, beyond chance: the paired drop exceeds `tolerance` by more
    than 1.645 standard errors. The samples whose verdict changed carry all
    the evidence (McNemar's view of a paired comparison): a set of 143
    samples where 4 changed can tell a fall of 3 from noise, not of 1."""
    start_hits, final_hits, weights = _columns(start_hits, final_hits, weights)
    total = weights.sum(axis=0)
    change = (start_hits - final_hits) * weights
    drop = change.sum(axis=0) / total
    standard_error = np.sqrt(np.square(change).sum(axis=0)) / total
    # Several class outputs: each must keep the promise.
    return bool((drop > tolerance + _Z * standard_error).any())
