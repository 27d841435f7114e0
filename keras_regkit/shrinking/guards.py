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

# The guard's limit on disagreement per unit of the user's accuracy
# tolerance. A changed prediction moves accuracy by at most one sample, so 1
# bounds the accuracy change on the reference inputs by the tolerance; 2
# and 3 were tried on benchmarks/bench_shrink_quality.py and lost more test
# accuracy than the tolerance on digits (README, shrink section).
DISAGREEMENT_PER_TOLERANCE = 1.0
_PREDICT_BATCH = 1024


def _first_axis(tree) -> int:
    return int(np.shape(keras.tree.flatten(tree)[0])[0])


def _take(tree, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], tree)


def _split(batch):
    """(x, y, sample_weight) of one batch or one `validation_data` tuple."""
    if isinstance(batch, tuple):
        return (tuple(batch) + (None, None))[:3]
    return batch, None, None


def _is_arrays(data) -> bool:
    try:
        return all(hasattr(a, "shape") and hasattr(a, "__array__") for a in keras.tree.flatten(data))
    except Exception:  # noqa: BLE001 - any exotic structure is "not arrays"
        return False


def sample_inputs(x, samples: int, seed: int = 0):
    """Up to `samples` inputs from `x`: arrays (or lists and dicts of them),
    picked at random without replacement, or the first batches of a dataset,
    generator or `keras.utils.PyDataset` that yields `x` or `(x, y, ...)`."""
    if _is_arrays(x):
        n = _first_axis(x)
        if n <= samples:
            return keras.tree.map_structure(np.asarray, x)
        index = np.sort(np.random.default_rng(seed).choice(n, samples, replace=False))
        return _take(x, index)
    taken, count = [], 0
    batches = (x[i] for i in range(len(x))) if isinstance(x, keras.utils.PyDataset) else iter(x)
    for batch in batches:
        inputs = keras.tree.map_structure(lambda a: np.asarray(keras.ops.convert_to_numpy(a)), _split(batch)[0])
        taken.append(inputs)
        count += _first_axis(inputs)
        if count >= samples:
            break
    if not taken:
        raise ValueError("The shrink's guard found no inputs in the data it was given: it is empty.")
    joined = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *taken)
    return _take(joined, slice(0, samples))


def predict(model: keras.Model, inputs) -> np.ndarray:
    """The model's outputs on `inputs` (arrays), in inference mode, batch by
    batch. A direct call, not `predict`: under a multi-worker strategy each
    worker then computes its own copy, instead of gathering every worker's."""
    n = _first_axis(inputs)
    parts = [
        keras.ops.convert_to_numpy(model(_take(inputs, slice(i, i + _PREDICT_BATCH)), training=False))
        for i in range(0, n, _PREDICT_BATCH)
    ]
    outputs = np.concatenate([np.asarray(p, dtype="float32") for p in parts])
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        raise ValueError(
            "The shrink's accuracy guard compares top-1 predictions, so the model must have one "
            f"output with a class axis of 2 or more; this one gives shape {outputs.shape}. "
            "Use the sparsity mode (`sparsity=`) for other models."
        )
    return outputs


def top1(model: keras.Model, inputs) -> np.ndarray:
    return np.argmax(predict(model, inputs), axis=-1)


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
        return float(np.mean(top1(model, self.inputs) != self.reference))

    def holds(self, model: keras.Model) -> bool:
        # NaN predictions argmax to 0 everywhere: they disagree, and fail.
        return self.disagreement(model) <= self.max_disagreement


def validation_hits(model: keras.Model, validation_data) -> tuple[np.ndarray, np.ndarray]:
    """Per sample of `validation_data` (`(x, y)` or `(x, y, sample_weight)`
    arrays, or a dataset of such batches): whether the model's top-1 class is
    right, and the sample's weight (1 where none is given). Labels are class
    indices, or one-hot / probability rows."""
    if isinstance(validation_data, (tuple, list)) and _is_arrays(validation_data[0]):
        batches = [_split(tuple(validation_data))]
    else:
        source = validation_data
        if isinstance(source, keras.utils.PyDataset):
            source = (source[i] for i in range(len(source)))
        batches = (_split(batch) for batch in source)
    hits, weights = [], []
    for x, y, weight in batches:
        predicted = top1(model, keras.tree.map_structure(lambda a: np.asarray(keras.ops.convert_to_numpy(a)), x))
        labels = np.asarray(keras.ops.convert_to_numpy(y))
        if labels.ndim == predicted.ndim + 1 and labels.shape[-1] > 1:
            labels = np.argmax(labels, axis=-1)
        hit = (predicted == labels.reshape(predicted.shape)).astype("float64").reshape(-1)
        hits.append(hit)
        weights.append(np.ones_like(hit) if weight is None
                       else np.asarray(keras.ops.convert_to_numpy(weight), "float64").reshape(-1))
    hits, weights = np.concatenate(hits), np.concatenate(weights)
    if weights.sum() <= 0:
        raise ValueError("The shrink's validation data is empty (or all its sample weights are 0).")
    return hits, weights


def accuracy(hits: np.ndarray, weights: np.ndarray) -> float:
    """Weighted top-1 accuracy, as `fit` weighs `val_accuracy`."""
    return float((hits * weights).sum() / weights.sum())


# One-sided 95 % normal quantile.
_Z = 1.645


def drop_exceeds(start_hits: np.ndarray, final_hits: np.ndarray, weights: np.ndarray, tolerance: float) -> bool:
    """Whether the validation data show that accuracy fell by more than
    `tolerance`, beyond chance: the paired drop exceeds `tolerance` by more
    than 1.645 standard errors. The samples whose verdict changed carry all
    the evidence (McNemar's view of a paired comparison): a set of 143
    samples where 4 changed can tell a fall of 3 from noise, not of 1."""
    total = weights.sum()
    change = (start_hits - final_hits) * weights
    drop = change.sum() / total
    standard_error = np.sqrt(np.square(change).sum()) / total
    return bool(drop > tolerance + _Z * standard_error)
