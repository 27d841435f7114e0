"""Reading the data `fit` accepts, as `fit` reads it: arrays (or lists and
dicts of them), `(x, y[, sample_weight])` tuples, datasets, generators and
`keras.utils.PyDataset`s; the guard samples its inputs and reads its
validation batches through these."""

from __future__ import annotations

import keras
import numpy as np


def first_axis(tree) -> int:
    return int(np.shape(keras.tree.flatten(tree)[0])[0])


def take(tree, index):
    return keras.tree.map_structure(lambda a: np.asarray(a)[index], tree)


def _numpy(tree):
    return keras.tree.map_structure(
        lambda a: None if a is None else np.asarray(keras.ops.convert_to_numpy(a)), tree)


def _split(batch):
    """(x, y, sample_weight) of one batch or one `validation_data` tuple,
    as `fit` reads them: a tuple is `(x,)`, `(x, y)` or `(x, y, weight)`;
    anything else (a list or dict) is `x` alone."""
    if isinstance(batch, tuple):
        return (tuple(batch) + (None, None))[:3]
    return batch, None, None


def _is_arrays(data) -> bool:
    try:
        return all(hasattr(a, "shape") and hasattr(a, "__array__") for a in keras.tree.flatten(data))
    except Exception:  # noqa: BLE001 - any exotic structure is "not arrays"
        return False


def fit_inputs(x, y, sample_weight, batch_size, steps_per_epoch) -> dict:
    """`fit`'s training-data arguments for the shrink's `fit`: as given,
    but under TensorFlow, where `x, y, sample_weight` are arrays (and no
    `steps_per_epoch` or distribution of Keras' changes how `fit` reads
    them), the dataset `fit` would make of them, the same batches shuffled
    the same way, with tf.data's autotuning off. Keras makes a new iterator
    of it each epoch and tears the last one down; with autotuning on,
    TensorFlow waits there for the tuning thread's timer to run out: up to
    2.5 s an epoch at 20 M parameters on 2 CPU cores, most often where the
    loop pauses, as at each cut. Its number of batches is asserted, so
    `fit` counts an epoch's steps as it does for the arrays
    (`steps_per_execution` and `keras.config.max_steps_per_epoch`
    included), and validates in batches of the size given, as before."""
    given = {"x": x, "y": y, "sample_weight": sample_weight, "batch_size": batch_size,
             "steps_per_epoch": steps_per_epoch}
    if (keras.backend.backend() != "tensorflow" or steps_per_epoch is not None
            or keras.distribution.distribution() is not None):
        return given
    from keras_regkit._keras import data as fence

    made = fence.array_dataset(x, y, sample_weight, batch_size)
    if made is None or not made[1]:  # not arrays; or no sample, which `fit` refuses itself
        return given
    import tensorflow as tf

    dataset, batches = made
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches)).with_options(options)
    # A dataset is shuffled already (`fit` would warn); `fit` validates in
    # batches of `validation_batch_size or batch_size`.
    return {"x": dataset, "shuffle": False, "validation_batch_size": batch_size}


def is_infinite(data) -> bool:
    """A tf.data dataset that repeats forever (its cardinality says so),
    read without a limit."""
    cardinality = getattr(data, "cardinality", None)
    if cardinality is None:
        return False
    try:
        import tensorflow as tf

        return int(cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    except Exception:  # noqa: BLE001 - not a tf.data dataset after all
        return False


class Limited:
    """The first `steps` batches of `data`: what `fit` reads of its
    validation data with `validation_steps=`."""

    def __init__(self, data, steps: int):
        self.data, self.steps = data, steps

    def __repr__(self) -> str:
        return f"limit({self.data!r}, steps={self.steps})"


def limit(data, steps: int | None):
    """`data` read as `fit` reads it with `validation_steps=steps` (all of it
    for None)."""
    return data if steps is None or data is None else Limited(data, steps)


def batches(data, steps: int | None = None):
    """The `(x, y, sample_weight)` NumPy batches of `data`, read as `fit`
    reads it: an `(x, y[, sample_weight])` tuple of arrays (one batch), or a
    dataset, generator or `keras.utils.PyDataset` of such batches (a
    `Limited` one: its first `steps`); at most `steps` of them."""
    if isinstance(data, Limited):
        steps = data.steps if steps is None else min(steps, data.steps)
        data = data.data
    if isinstance(data, (tuple, list)) and data and _is_arrays(data[0]):
        batch = _numpy(_split(tuple(data)))
        _check_lengths(batch)
        yield batch
        return
    if isinstance(data, keras.utils.PyDataset):
        source = (data[i] for i in range(len(data)))
    else:
        source = iter(data)
    for count, batch in enumerate(source):
        if steps is not None and count >= steps:
            return
        yield _numpy(_split(batch))


def _check_lengths(batch) -> None:
    """`(x, y, sample_weight)` arrays must have one row per sample each."""
    lengths = {name: sorted({int(np.shape(a)[0]) for a in keras.tree.flatten(part)})
               for name, part in zip(("x", "y", "sample_weight"), batch) if part is not None}
    if len({n for found in lengths.values() for n in found}) > 1:
        raise ValueError(
            "Invalid value for argument `validation_data`: its parts must have the same number of "
            f"samples (first axis); received {', '.join(f'{k}: {v}' for k, v in lengths.items())}.")


def check_validation_data(validation_data) -> None:
    """Refuses, before the shrink changes anything, validation data that no
    check could be measured on or that `fit`'s validation would fail on
    after training steps: no sample, inputs that are not finite, batches
    without targets, targets that are not finite numbers, sample weights
    that are not finite and >= 0."""
    samples = 0
    for x, y, weight in batches(validation_data):
        if y is None:
            raise ValueError(
                "Invalid value for argument `validation_data`: it must carry targets: `(x, y)` or "
                "`(x, y, sample_weight)` arrays, or a dataset of such batches; received inputs alone.")
        samples += first_axis(x)
        bad_inputs = non_finite(x)
        if bad_inputs:
            raise ValueError(
                "Invalid value for argument `validation_data`: its inputs are not all finite "
                f"({bad_inputs} NaN or inf entries in a batch). What a model predicts on them depends on "
                "how the device's kernels treat NaN (a fused ReLU may turn it into 0), so no change of "
                "accuracy could be measured there.")
        for part, what in ((y, "targets"), (weight, "sample weights")):
            for array in [] if part is None else keras.tree.flatten(part):
                array = np.asarray(array)
                if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                    raise ValueError(
                        f"Invalid value for argument `validation_data`: its {what} must be numbers; "
                        f"received an array of dtype {array.dtype}.")
                bad = ~np.isfinite(array) if what == "targets" else ~(np.isfinite(array) & (array >= 0))
                if bad.any():
                    raise ValueError(
                        f"Invalid value for argument `validation_data`: its {what} must be "
                        f"{'finite' if what == 'targets' else 'finite and >= 0'}; {int(bad.sum())} of "
                        f"them are not (e.g. {array[bad].reshape(-1)[0].item()}).")
    if samples == 0:
        raise ValueError(
            "Invalid value for argument `validation_data`: it has no samples, so no check could be "
            f"measured there. Received: validation_data={validation_data!r}")


def non_finite(x) -> int:
    """How many entries of the floating arrays in `x` (an array, or a
    list or dict of them) are NaN or inf."""
    arrays = (np.asarray(array) for array in keras.tree.flatten(x))
    # bfloat16 (an ml_dtypes type) is no NumPy floating type.
    return sum(int((~np.isfinite(a.astype("float32"))).sum()) for a in arrays
               if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16")


def sample_inputs(x, samples: int, seed: int = 0):
    """Up to `samples` inputs from `x`: arrays (or lists and dicts of them),
    picked at random without replacement, or the first batches of a dataset,
    generator or `keras.utils.PyDataset` that yields `x` or `(x, y, ...)`."""
    if _is_arrays(x):
        n = first_axis(x)
        if n <= samples:
            return _numpy(x)
        index = np.sort(np.random.default_rng(seed).choice(n, samples, replace=False))
        return take(x, index)
    taken, count = [], 0
    for inputs, _, _ in batches(x):
        taken.append(inputs)
        count += first_axis(inputs)
        if count >= samples:
            break
    if not taken:
        raise ValueError("The shrink's guard found no inputs in the data it was given: it is empty.")
    joined = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *taken)
    return take(joined, slice(0, samples))


def read_once(data) -> bool:
    """An iterator or generator: reading it uses it up."""
    if isinstance(data, Limited):
        return read_once(data.data)
    if data is None or isinstance(data, (tuple, list, dict, keras.utils.PyDataset)):
        return False
    try:
        return iter(data) is data
    except TypeError:
        return False


def shrink_validation_data(data, policy):
    """Refuses validation data the shrink could not read twice or to the
    end, or none for a policy that checks."""
    if read_once(data):
        raise ValueError(
            "Invalid value for argument `validation_data`: an iterator or generator can be read only once, "
            "and the shrink would use it up (it reads its validation data at the start and at the end). "
            f"Pass arrays, a tf.data.Dataset or a keras.utils.PyDataset. Received: validation_data={data!r}")
    if isinstance(data, (tuple, list)) and not data:
        raise ValueError("Invalid value for argument `validation_data`: expected `(x, y)` or `(x, y, "
                         f"sample_weight)` arrays, or a dataset. Received: validation_data={data!r}")
    if is_infinite(data):
        raise ValueError(
            "Invalid value for argument `validation_data`: this dataset repeats forever, and the shrink "
            "reads its validation data to the end. Pass `validation_data.take(n)` (or `validation_steps=` "
            "to `keras_regkit.shrink`).")
    if policy.check is not None and data is None:
        raise ValueError(
            "The tolerance mode needs `validation_data=` (arrays or a dataset with targets): each level it "
            "reaches is checked there against the starting model. Or give `sparsity=` instead.")
    return data
