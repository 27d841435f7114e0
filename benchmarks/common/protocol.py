"""The quality protocol shared by the shrink-quality benchmarks (Keras 3) and
`tfmot/bench_tfmot.py` (tf_keras, its own venv), so that all measure the
same thing: the demo's data and MLP, Adam 1e-3, batch 64, a baseline
trained from scratch per seed, then every shrink from a copy of its weights
and optimizer state. Each function takes the `keras` module to use."""

import time

import numpy as np

from common.data import LOADERS, VALIDATION_FRACTION, datasets  # noqa: F401  (the protocol's data)
from common.models import build_mlp, compile_model

SEED = 0
BATCH_SIZE = 64
BASELINE_EPOCHS = {"digits": 40, "mnist1d": 60}
SHRINK_EPOCHS = 10


def accuracy(model, x, y):
    """Top-1 accuracy of the logits `model` gives for `x`."""
    logits = np.asarray(model(x, training=False))
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train_baseline(keras, name, x, y, x_val, y_val, quick=False, seed=SEED):
    """The baseline every benchmark starts from; returns (model, seconds).
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
