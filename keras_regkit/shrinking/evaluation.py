"""Evaluating a model on the shrink's data: predictions, top-1 hits per
sample, accuracy and compiled metrics, every count summed over processes
(`keras_regkit._processes.global_sum`), so each process decides the same."""

from __future__ import annotations

import re

import keras
import numpy as np

from keras_regkit._processes import global_sum, process_count
from keras_regkit.shrinking.data import batches, first_axis, take

_PREDICT_BATCH = 1024


def predict(model: keras.Model, inputs, batch_size: int = _PREDICT_BATCH) -> list[np.ndarray]:
    """Each of the model's outputs (flattened as `keras.tree.flatten` orders
    them, as float32) on `inputs` (arrays), in inference mode, `batch_size`
    samples at a time, through `forward(model)`."""
    n = first_axis(inputs)
    call = forward(model)
    parts = [
        [np.asarray(keras.ops.convert_to_numpy(o), dtype="float32")
         for o in keras.tree.flatten(call(take(inputs, slice(i, i + batch_size))))]
        for i in range(0, n, batch_size)
    ]
    return [np.concatenate(output) for output in zip(*parts)]


def forward(model: keras.Model):
    """How the checks run the model on a batch: its compiled predict step
    (`predict_on_batch`: traced once, then reused by every check, where an
    eager `model(x)` call costs its Python dispatch at every layer each
    time), or a direct call `model(x, training=False)` where the predict step
    would not compute exactly that on this process's samples alone: a
    `predict_step` of the model's own, or data spread over several replicas
    or processes (`predict` gathers every worker's outputs; each process
    counts its own samples, see `global_sum`)."""
    def direct(x):
        return model(x, training=False)

    if type(model).predict_step is not keras.Model.predict_step or _distributed(model):
        return direct

    def compiled(x):
        try:
            return model.predict_on_batch(x)
        except Exception:  # noqa: BLE001 - a compiled graph's error says less ("Graph execution error")
            return direct(x)  # raises the layer's own message, which the checks' refusals quote

    return compiled


def _distributed(model: keras.Model) -> bool:
    if process_count() > 1 or keras.distribution.distribution() is not None:
        return True
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's
    return strategy is not None and strategy.num_replicas_in_sync > 1


def class_outputs(outputs: list[np.ndarray]) -> list[int]:
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


def has_class_output(model: keras.Model, validation_data) -> bool:
    """Whether the model gives a class axis on the first validation batch."""
    for x, _, _ in batches(validation_data, 1):
        return any(o.ndim >= 2 and o.shape[-1] >= 2 for o in predict(model, x))
    return False


def top1(model: keras.Model, inputs) -> np.ndarray:
    """The top-1 class of each class output: shape `(samples, outputs)`."""
    return class_top1(predict(model, inputs))


def class_top1(outputs: list[np.ndarray]) -> np.ndarray:
    """`top1` of outputs already predicted."""
    return np.stack([np.argmax(outputs[i], axis=-1).reshape(-1) for i in class_outputs(outputs)], axis=-1)


def check_loss(model: keras.Model, validation_data) -> None:
    """Computes the compiled loss on the first validation samples, as `fit`'s
    validation does; raises what the loss raises on targets it cannot take
    (a wrong shape, a class index out of range)."""
    if getattr(model, "loss", None) is None:
        return  # no compiled loss: `fit`'s validation computes none (a test_step of the user's own)
    for x, y, weight in batches(validation_data, 1):
        x, y, weight = (None if part is None else take(part, slice(0, _PREDICT_BATCH)) for part in (x, y, weight))
        model.compute_loss(x=x, y=y, y_pred=model(x, training=False), sample_weight=weight, training=False)


def per_output(model: keras.Model, outputs, tree, is_weight=False):
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


def validation_hits(model: keras.Model, validation_data):
    """Per sample of `validation_data` (`(x, y)` or `(x, y, sample_weight)`
    arrays, or a dataset of such batches, see `data.limit`), and per
    class output of the model (columns, in `keras.tree.flatten` order):
    whether the top-1 class is right, and the sample's weight for that
    output (1 where none is given), as `fit` weighs `val_*accuracy`. Labels
    are class indices, or one-hot / probability rows. A prediction that is
    not finite is never right. Also returns whether every prediction was
    finite, and the predicted classes (the hits' shape)."""
    hits, weights, classes, finite = [], [], [], True
    for x, y, weight in batches(validation_data):
        if y is None:
            raise ValueError("Invalid value for argument `validation_data`: it must carry targets: `(x, y)` batches.")
        outputs = predict(model, x)
        labels, sample_weights = per_output(model, outputs, y), per_output(model, outputs, weight, is_weight=True)
        columns = [i for i in class_outputs(outputs) if labels[i] is not None]
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
            elif np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
                raise ValueError(
                    "Invalid value for argument `validation_data`: a class output's targets must be class "
                    f"indices (whole numbers) or one-hot rows; received {label[label != np.round(label)][0]}.")
            hit_columns.append((predicted == label.reshape(-1)) & ok)
            weight_columns.append(np.ones(len(predicted)) if sample_weights[i] is None
                                  else np.asarray(sample_weights[i], "float64").reshape(-1))
        hits.append(np.stack(hit_columns, axis=-1).astype("float64"))
        weights.append(np.stack(weight_columns, axis=-1))
        classes.append(np.stack(class_columns, axis=-1))
    if not hits:
        raise ValueError("Invalid value for argument `validation_data`: it has no samples.")
    hits, weights, classes = np.concatenate(hits), np.concatenate(weights), np.concatenate(classes)
    if (global_sum(weights.sum(axis=0)) <= 0).any():
        raise ValueError("Invalid value for argument `validation_data`: all its sample weights are 0 (for an "
                         "output, if several), so no accuracy could be measured there.")
    return hits, weights, finite, classes


def reason(error: Exception) -> str:
    """`error` in one line for a message of ours: its type and the first line
    that says what went wrong (not Keras' "Exception encountered when
    calling ..." header)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    said = next((line for line in lines if line and not line.startswith("Exception encountered when calling")), "")
    return f"{type(error).__name__}: {said[:300]}"


def columns(*arrays):
    return [a.reshape(len(a), -1) for a in arrays]


def accuracy(hits: np.ndarray, weights: np.ndarray) -> float:
    """Weighted top-1 accuracy over every process's samples, as `fit`
    weighs `val_accuracy` (the mean over class outputs, when there are
    several)."""
    hits, weights = columns(hits, weights)
    right, total = np.split(global_sum(np.concatenate([(hits * weights).sum(axis=0), weights.sum(axis=0)])), 2)
    return float(np.mean(right / total))


def maximizes(monitor: str, mode: str = "auto") -> bool:
    """Whether a higher `monitor` is better: `mode` `"max"`/`"min"`, or for
    `"auto"` an accuracy-like name (as Keras' `MonitorCallback` guesses)."""
    if mode != "auto":
        return mode == "max"
    name = monitor.removeprefix("val_")
    return any(key in name for key in ("acc", "auc", "precision", "recall", "f1"))


def compiled_metric(model: keras.Model, validation_data, monitor: str) -> float:
    """`monitor` (a log name, `val_` optional) on the validation data, with
    the model's own compiled metrics (their state is put back after), or
    its loss for `"loss"`; over every process's data."""
    name = monitor.removeprefix("val_")
    if name == "loss":
        total = count = 0.0
        call = forward(model)
        for x, y, weight in batches(validation_data):
            loss = model.compute_loss(x=x, y=y, y_pred=call(x), sample_weight=weight, training=False)
            n = first_axis(x)
            total += float(keras.ops.convert_to_numpy(loss)) * n
            count += n
        total, count = global_sum([total, count])
        return float(total / count)
    metrics = next((m for m in model.metrics if m.name == "compile_metrics"), None)
    if metrics is None:
        raise ValueError(
            f"Invalid value for argument `monitor`: {monitor!r} needs the model to be compiled with "
            "that metric (`model.compile(..., metrics=[...])`); it has no compiled metrics, so the only "
            "valid one is 'val_loss'.")
    saved = [np.array(keras.ops.convert_to_numpy(v)) for v in metrics.variables]
    try:
        metrics.reset_state()
        call = forward(model)
        for x, y, weight in batches(validation_data):
            metrics.update_state(y, call(x), weight)
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
