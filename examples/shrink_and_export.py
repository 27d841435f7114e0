"""Shrink a trained MLP to exact zeros, then export it for serving.

Trains an MLP on digits, then `rk.shrink` cuts its kernels to `--sparsity`
exact zeros, gradually, training between the cuts. The shrunk model is
exported as a TensorFlow SavedModel (`model.export`), reloaded with
`tf.saved_model.load` with no Keras or keras_regkit code, and its served
predictions are compared with `model.predict`. It is also saved as .keras
and reloaded, zeros intact.

Run:
    python examples/shrink_and_export.py [--workdir DIR]
    python examples/shrink_and_export.py --quick
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--shrink-epochs", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of kernel entries to zero")
    parser.add_argument("--workdir", help="where to export (default: a temp dir)")
    args = parser.parse_args(argv)
    epochs, shrink_epochs, limit = (4, 3, 600) if args.quick else (args.epochs, args.shrink_epochs, None)
    workdir = args.workdir or tempfile.mkdtemp(prefix="regkit_")

    keras.utils.set_random_seed(0)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:limit]
    x, y = (digits.data[order] / 16.0).astype("float32"), digits.target[order].astype("int32")
    n_val = len(x) // 5
    (x_val, y_val), (x, y) = (x[:n_val], y[:n_val]), (x[n_val:], y[n_val:])

    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    _, trained_accuracy = model.evaluate(x_val, y_val, verbose=0)
    print(f"trained: val_accuracy {trained_accuracy:.3f}")

    result = rk.shrink(model, x, y, sparsity=args.sparsity, validation_data=(x_val, y_val),
                       epochs=shrink_epochs, batch_size=32)
    print(result)

    export_dir = os.path.join(workdir, "served")
    model.export(export_dir, verbose=False)  # a TF SavedModel with a "serve" endpoint
    served = tf.saved_model.load(export_dir)
    expected = model.predict(x_val, verbose=0)
    got = served.serve(tf.constant(x_val)).numpy()
    max_diff = float(np.max(np.abs(got - expected)))
    print(f"\nexported to {export_dir}; served vs model.predict: max |diff| = {max_diff:.2e}")

    keras_path = os.path.join(workdir, "shrunk.keras")
    model.save(keras_path)
    reloaded = keras.saving.load_model(keras_path)
    reloaded_sparsity = rk.sparsity_report(reloaded).total.sparsity
    print(f"saved {keras_path}; reloaded sparsity {reloaded_sparsity:.1%}")
    return {"result": result, "trained_accuracy": float(trained_accuracy), "max_diff": max_diff,
            "served": got, "expected": expected, "reloaded_sparsity": reloaded_sparsity,
            "reloaded_predictions": reloaded.predict(x_val, verbose=0)}


if __name__ == "__main__":
    main()
