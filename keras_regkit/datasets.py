"""The demo's data and model, which the benchmarks share.

Real data that ships inside pip packages (no network): scikit-learn's
`digits` (8x8 images, 1,797 samples) and MNIST-1D (generated locally by the
`mnist1d` package). Both come split the same way: a fixed shuffle, a test
split, and a validation split held out of the training data; inputs are
scaled with the training split's statistics only.

NumPy only, and no import of the rest of the package: the TF-MOT baseline
(benchmarks/tfmot, a tf_keras environment) loads this file by its path, so
that both sides of that comparison read the same data and build the same
model.
"""

from __future__ import annotations

import numpy as np

NAMES = ("digits", "mnist1d")
VALIDATION_FRACTION = 0.1  # of the training data
SPLIT_SEED = 0  # the shuffle before the split: the same split for every run


def load(name: str, validation_fraction: float = VALIDATION_FRACTION):
    """`(x_train, y_train), (x_val, y_val), (x_test, y_test)`, float32 and
    int32.

    Raises:
        ValueError: For an unknown name.
        ImportError: If the package that holds the data is missing (the
            message says which extra installs it).
    """
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("the digits data needs scikit-learn: pip install 'keras_regkit[demo]'") from None
        digits = load_digits()
        x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int32")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        x, y = x[order], y[order]
        n_test = len(x) // 5
        (x_test, y_test), (x, y) = (x[:n_test], y[:n_test]), (x[n_test:], y[n_test:])
    elif name == "mnist1d":
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise ImportError("the mnist1d data needs the mnist1d package: pip install 'keras_regkit[demo]'") from None
        # make_dataset reseeds NumPy's global generator: it runs first.
        data = make_dataset(get_dataset_args())
        x, y = np.asarray(data["x"], "float32"), np.asarray(data["y"], "int32")
        x_test, y_test = np.asarray(data["x_test"], "float32"), np.asarray(data["y_test"], "int32")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        x, y = x[order], y[order]
    else:
        raise ValueError(f"Unknown dataset {name!r}: expected one of {list(NAMES)}.")
    n_val = int(len(x) * validation_fraction)
    (x_val, y_val), (x, y) = (x[:n_val], y[:n_val]), (x[n_val:], y[n_val:])
    if name == "mnist1d":
        # Scaled by the training split alone: nothing of the held-out data
        # leaks into the inputs.
        mean, std = float(x.mean()), float(x.std())
        x, x_val, x_test = ((a - mean) / std for a in (x, x_val, x_test))
    return (x, y), (x_val, y_val), (x_test, y_test)


def mlp(keras, n_features: int, units=(300, 100), classes: int = 10, name: str | None = None):
    """The demo's and the benchmarks' MLP (ReLU hidden layers, logits out).
    `keras` is passed in, so that tf_keras builds the same model for TF-MOT."""
    return keras.Sequential(
        [keras.layers.Input((n_features,))]
        + [keras.layers.Dense(n, activation="relu", name=f"dense_{n}") for n in units]
        + [keras.layers.Dense(classes, name="logits")],
        name=name,
    )
