"""ExpAbs penalty with a delayed, ramped strength on a small CNN.

Trains a Conv2D network on scikit-learn's 8x8 digits. The convolution and
dense kernels get `ExpAbs` (L1-like near zero, exponential for large
weights) whose strength is held at 0 for the first epochs and then ramps up
(`DelayedRamp`), moved inside the train step by `RegularizationScheduler`.
`SparsityMonitor` logs the near-zero fraction each epoch.

Run:
    python examples/expabs_cnn.py            # ~20 epochs
    python examples/expabs_cnn.py --quick    # a few seconds
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def load_images(limit=None):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (n, 8, 8, 1)
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))[:limit]
    x, y = x[order], y[order]
    n_test = len(x) // 5
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--strength", type=float, default=2e-4, help="ExpAbs alpha after the ramp")
    args = parser.parse_args(argv)
    epochs, limit = (4, 600) if args.quick else (args.epochs, None)
    batch_size = 32

    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = load_images(limit)
    steps = int(np.ceil(len(x) * 0.9 / batch_size))  # per epoch, after validation_split
    ramp = rk.schedules.DelayedRamp(
        target=args.strength, delay_steps=steps * (epochs // 4), ramp_steps=steps * (epochs // 2)
    )
    penalty = rk.regularizers.ExpAbs(ramp, scale=0.5)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_regularizer=penalty),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_regularizer=penalty),
        keras.layers.Flatten(),
        keras.layers.Dense(10, kernel_regularizer=penalty),
    ])
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs, validation_split=0.1, verbose=0,
        callbacks=[rk.callbacks.RegularizationScheduler(),
                   rk.callbacks.SparsityMonitor(threshold=1e-2, per_layer=False)],
    )
    h = history.history
    strength_key = next(k for k in h if k.startswith("strength/"))
    print("epoch  loss    val_acc  reg_loss  strength   |w|<=1e-2")
    for e in range(epochs):
        print(f"{e + 1:5d}  {h['loss'][e]:.4f}  {h['val_accuracy'][e]:.3f}    "
              f"{h['reg_loss'][e]:.4f}    {h[strength_key][e]:.2e}   {h['near_zero'][e]:.1%}")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    report = rk.sparsity_report(model, threshold=1e-2)
    print(f"\ntest accuracy: {accuracy:.3f}\n{report}")
    return {"accuracy": float(accuracy), "history": h, "strengths": h[strength_key], "report": report}


if __name__ == "__main__":
    main()
