"""`keras-regkit` command line: `keras-regkit demo [--quick]`."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "keras-regkit demo: needs scikit-learn for its data; "
            "install it with: pip install 'keras_regkit[demo]'"
        ) from None
    import numpy as np

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n_test = len(x) // 5
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def _methods(steps_per_epoch, epochs):
    import keras

    from keras_regkit.regularizers import L1, L2, ExpAbs
    from keras_regkit.schedules import DelayedRamp

    ramp = DelayedRamp(
        target=3e-4,
        delay_steps=steps_per_epoch * max(1, epochs // 4),
        ramp_steps=steps_per_epoch * max(1, epochs // 2),
    )
    return {
        "none": None,
        "L2(1e-4)": L2(1e-4),
        "L1(1e-4)": L1(1e-4),
        "ExpAbs(ramp to 3e-4)": ExpAbs(ramp, scale=0.5),
    }, keras


def demo(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    (x, y), (x_test, y_test) = _load_digits()
    epochs = 3 if args.quick else args.epochs
    batch_size = 64
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    methods, keras = _methods(steps_per_epoch, epochs)

    import keras_regkit as rk

    print(f"digits: {len(x)} train / {len(x_test)} test images, {epochs} epochs per method")
    rows = []
    for name, regularizer in methods.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        if regularizer is not None:
            rk.apply_regularizers(model, {"*": regularizer})
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        print(f"\n== {name}")
        model.fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=2,
            validation_split=0.1, callbacks=[rk.callbacks.RegularizationScheduler()],
        )
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        kernels = np.concatenate(
            [np.abs(keras.ops.convert_to_numpy(ref.variable)).ravel() for ref in rk.iter_weights(model)]
        )
        rows.append((name, accuracy, np.mean(kernels < 1e-3), time.perf_counter() - start))

    print("\nmethod                  test acc   |w|<1e-3   time")
    for name, accuracy, small, seconds in rows:
        print(f"{name:<22} {accuracy:9.3f} {small:10.1%} {seconds:6.1f}s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="keras-regkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train digits with and without penalties")
    demo_parser.add_argument("--quick", action="store_true", help="3 epochs, for a smoke test")
    demo_parser.add_argument("--epochs", type=_positive_int, default=30)
    args = parser.parse_args(argv)
    return demo(args)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
