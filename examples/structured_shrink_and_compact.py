"""Shrink a CNN filter by filter, then remove the dead filters for real.

Trains a small CNN on the 8x8 digits. `rk.shrink(..., granularity="unit")`
then cuts whole filters and units of every hidden Conv2D and Dense layer to
exact zero, gradually, until `--sparsity` of them are dead, training between
the cuts. `rk.compact` builds a new model without them (the next
layers' weights sliced, the dead units' constant outputs folded into their
biases): fewer parameters, a smaller file, the same predictions. The
compacted model is saved and reloaded as a plain Keras model.

Run:
    python examples/structured_shrink_and_compact.py [--workdir DIR]
    python examples/structured_shrink_and_compact.py --quick
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def build_cnn():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--shrink-epochs", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of hidden units to remove")
    parser.add_argument("--workdir", help="where to save (default: a temp dir)")
    args = parser.parse_args(argv)
    epochs, shrink_epochs, limit = (6, 3, 800) if args.quick else (args.epochs, args.shrink_epochs, None)
    workdir = args.workdir or tempfile.mkdtemp(prefix="regkit_")

    keras.utils.set_random_seed(0)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:limit]
    x = (digits.images[order, :, :, None] / 16.0).astype("float32")
    y = digits.target[order].astype("int32")
    n_val = len(x) // 5
    (x_val, y_val), (x, y) = (x[:n_val], y[:n_val]), (x[n_val:], y[n_val:])

    model = build_cnn()
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    print(f"trained: val_accuracy {model.evaluate(x_val, y_val, verbose=0)[1]:.3f}")

    result = rk.shrink(model, x, y, sparsity=args.sparsity, validation_data=(x_val, y_val),
                       epochs=shrink_epochs, batch_size=32, granularity="unit")
    print(result)

    compacted = rk.compact(model)
    print(compacted)
    small = compacted.model
    max_diff = float(np.max(np.abs(small.predict(x_val, verbose=0) - model.predict(x_val, verbose=0))))
    print(f"compacted vs shrunk predictions: max |diff| = {max_diff:.2e}")

    path = os.path.join(workdir, "compact.keras")
    small.save(path)
    reloaded = keras.saving.load_model(path)
    print(f"saved {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    return {"result": result, "compacted": compacted, "max_diff": max_diff,
            "predictions": small.predict(x_val, verbose=0),
            "reloaded_predictions": reloaded.predict(x_val, verbose=0)}


if __name__ == "__main__":
    main()
