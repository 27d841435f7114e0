"""Separate penalties on an LSTM's input kernel and its recurrent kernel.

Reads each 8x8 digit row by row: a sequence of 8 timesteps with 8 features,
classified by an LSTM. The input kernel gets an L1 penalty (sparse input
connections), the recurrent kernel a scheduled L2 (a ramp that keeps the
recurrent weights small), attached after building with two calls of
`apply_regularizers(..., weights="kernel")` and `weights="recurrent_kernel"`.
Selecting the `LSTM` layer reaches the weights of its cell. The report with
`weights="all"` lists every weight, biases included, and its regularizer.

Run:
    python examples/lstm_penalties.py
    python examples/lstm_penalties.py --quick
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--units", type=int, default=32)
    args = parser.parse_args(argv)
    epochs, limit = (4, 600) if args.quick else (args.epochs, None)

    keras.utils.set_random_seed(0)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:limit]
    x = (digits.images[order] / 16.0).astype("float32")  # (n, 8 timesteps, 8 features)
    y = digits.target[order].astype("int32")
    n_test = len(x) // 5
    (x_test, y_test), (x, y) = (x[:n_test], y[:n_test]), (x[n_test:], y[n_test:])
    steps = int(np.ceil(len(x) / 32))

    model = keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.LSTM(args.units, name="lstm"),
        keras.layers.Dense(10, name="classifier"),
    ])
    rk.apply_regularizers(model, {"lstm": rk.regularizers.L1(1e-4)}, weights="kernel")
    ramp = rk.schedules.DelayedRamp(1e-3, delay_steps=steps, ramp_steps=steps * (epochs - 1))
    rk.apply_regularizers(model, {keras.layers.LSTM: rk.regularizers.L2(ramp)}, weights="recurrent_kernel")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
                        callbacks=[rk.callbacks.RegularizationScheduler()])
    h = history.history
    key = next(k for k in h if k.startswith("strength/"))
    for e in range(epochs):
        print(f"epoch {e + 1:2d}: loss {h['loss'][e]:.4f}  acc {h['accuracy'][e]:.3f}  "
              f"reg_loss {h['reg_loss'][e]:.4f}  {key} {h[key][e]:.2e}")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    report = rk.sparsity_report(model, weights="all")
    print(f"\ntest accuracy: {accuracy:.3f}\n{report}")
    return {"accuracy": float(accuracy), "strengths": h[key], "strength_key": key,
            "regularizers": {s.name: s.regularizer for s in report.layers}}


if __name__ == "__main__":
    main()
