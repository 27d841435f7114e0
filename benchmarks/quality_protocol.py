"""The data and model protocol shared by bench_shrink_quality.py (Keras 3)
and tfmot/bench_tfmot.py (tf_keras, its own venv), so both measure the
same thing. The data and the MLP are the demo's (`keras_regkit/datasets.py`);
each script passes in its own `keras`."""

import time

import numpy as np

SEED = 0
BATCH_SIZE = 64
BASELINE_EPOCHS = {"digits": 40, "mnist1d": 60}
SHRINK_EPOCHS = 10


def _datasets_module():
    """`keras_regkit/datasets.py`, loaded by its path: NumPy only, so the
    TF-MOT baseline's tf_keras environment reads it without the package."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "keras_regkit", "datasets.py")
    spec = importlib.util.spec_from_file_location("keras_regkit_datasets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


datasets = _datasets_module()
VALIDATION_FRACTION = datasets.VALIDATION_FRACTION  # of the training split, held out for the checks
LOADERS = {name: (lambda fraction=VALIDATION_FRACTION, name=name: datasets.load(name, fraction))
           for name in datasets.NAMES}


def build_mlp(keras, n_features):
    return datasets.mlp(keras, n_features)


def compile_model(keras, model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, x, y):
    logits = np.asarray(model(x, training=False))
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train_baseline(keras, name, x, y, x_val, y_val, quick=False, seed=SEED):
    """The baseline both benchmarks start from; returns (model, seconds).
    `seed` sets init and shuffling only; the data split stays at SEED."""
    keras.utils.set_random_seed(seed)
    model = build_mlp(keras, x.shape[1])
    compile_model(keras, model)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3 if quick else BASELINE_EPOCHS[name],
              shuffle=True, validation_data=(x_val, y_val), verbose=0)
    return model, time.perf_counter() - start


def resetter(keras, model):
    """A `reset()` that puts the model's weights and optimizer state back to
    what they are now: every shrink of a seed starts from the same state, as
    a user's `shrink` after `fit` would."""
    weights = model.get_weights()
    slots = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]

    def reset():
        model.set_weights(weights)
        for variable, value in zip(model.optimizer.variables, slots):
            variable.assign(value)

    return reset


def plain_fit_seconds(model, reset, x, y, validation_data, epochs):
    """The wall-time ratio's reference: plain epochs of `fit` from the reset
    state, with the same validation data."""
    reset()
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, validation_data=validation_data, verbose=0)
    return time.perf_counter() - start
