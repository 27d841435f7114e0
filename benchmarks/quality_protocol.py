"""The data and model protocol shared by bench_shrink_quality.py (Keras 3)
and tfmot/bench_tfmot.py (tf_keras, its own venv), so both measure the
same thing. Plain NumPy here; each script passes in its own `keras`."""

import time

import numpy as np

SEED = 0
BATCH_SIZE = 64
BASELINE_EPOCHS = {"digits": 40, "mnist1d": 60}
SHRINK_EPOCHS = 10


VALIDATION_FRACTION = 0.1  # of the training split, held out for the guard


def load_digits_split(validation_fraction=VALIDATION_FRACTION):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    y = d.target.astype("int32")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    x_test, y_test = x[:n_test], y[:n_test]
    x_tr, y_tr = x[n_test:], y[n_test:]
    n_val = int(len(x_tr) * validation_fraction)
    return (x_tr[n_val:], y_tr[n_val:]), (x_tr[:n_val], y_tr[:n_val]), (x_test, y_test)


def load_mnist1d_split(validation_fraction=VALIDATION_FRACTION):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:  # pragma: no cover - environment problem
        raise SystemExit("mnist1d is missing: pip install 'mnist1d==0.0.2.post1'")

    # make_dataset reseeds numpy/random with args.seed: run it before seeding.
    data = make_dataset(get_dataset_args())
    x = np.asarray(data["x"], dtype="float32")
    y = np.asarray(data["y"], dtype="int32")
    x_test = np.asarray(data["x_test"], dtype="float32")
    y_test = np.asarray(data["y_test"], dtype="int32")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_val = int(len(x) * validation_fraction)
    x_val, y_val = x[:n_val], y[:n_val]
    x_tr, y_tr = x[n_val:], y[n_val:]
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def norm(a):
        return ((a - mean) / std).astype("float32")

    return (norm(x_tr), y_tr), (norm(x_val), y_val), (norm(x_test), y_test)


LOADERS = {"digits": load_digits_split, "mnist1d": load_mnist1d_split}


# -------------------------------------------------------------------- model
def build_mlp(keras, n_features):
    return keras.Sequential(
        [
            keras.layers.Input((n_features,)),
            keras.layers.Dense(300, activation="relu", name="dense_300"),
            keras.layers.Dense(100, activation="relu", name="dense_100"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def compile_model(keras, model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def accuracy(model, x, y):
    logits = np.asarray(model(x, training=False))
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def kernel_sparsity(keras, model):
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            k = np.asarray(layer.kernel.numpy())
            z = int(np.count_nonzero(k == 0))
            per_layer[layer.name] = z / k.size
            zeros += z
            total += k.size
    return zeros / total, per_layer


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
