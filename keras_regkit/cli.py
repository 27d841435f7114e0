"""`keras-regkit` command line.

    keras-regkit demo [--quick] [--epochs N]
    keras-regkit inspect PATH.keras [--json] [--plot FILE.png] [--all-weights]
"""

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


def inspect(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import json

    import keras

    import keras_regkit as rk

    try:
        model = keras.saving.load_model(args.path, compile=False)
    except Exception as error:  # any failure to load is the user's file's
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return _fail(f"inspect: cannot load {args.path!r} as a Keras model: {message}")
    weights = "all" if args.all_weights else "kernel"
    if not args.all_weights and not any(True for _ in rk.iter_weights(model, "kernel")):
        weights = "all"  # e.g. an embedding model: report what it has
    try:
        report = rk.sparsity_report(model, weights=weights, threshold=args.threshold, relative=args.relative)
    except ValueError as error:
        return _fail(f"inspect: {error}")
    if args.json:
        print(json.dumps({"model": model.name, **report.to_dict()}, indent=2))
    else:
        print(f"{model.name}: {report.total.params:,} weights in {len(report.layers)} tensors")
        print(report)
    if args.plot:
        _plot_histograms(model, weights, args.plot)
    return 0


def _plot_histograms(model, weights, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "keras-regkit inspect: --plot needs matplotlib; "
            "install it with: pip install 'keras_regkit[demo]'"
        ) from None
    import numpy as np

    from keras_regkit.stats import weight_name
    from keras_regkit.weights import iter_weights

    refs = list(iter_weights(model, weights))
    cols = min(3, len(refs))
    rows = -(-len(refs) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for axis, ref in zip(axes.flat, refs):
        # A plot needs the values on the host; the table above never does.
        magnitude = np.abs(np.asarray(ref.variable.numpy(), dtype="float64")).ravel()
        zeros = int((magnitude == 0).sum())
        nonzero = magnitude[(magnitude > 0) & np.isfinite(magnitude)]
        if nonzero.size:
            axis.hist(np.log10(nonzero), bins=50)
        axis.set_title(f"{weight_name(ref)}\n{zeros:,} exact zeros", fontsize=9)
        axis.set_xlabel("log10 |w|")
    for axis in list(axes.flat)[len(refs):]:
        axis.axis("off")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise SystemExit(f"keras-regkit inspect: cannot write plot {path!r}: {error}") from None
    print(f"wrote {path}")


def _fail(message) -> int:
    print(f"keras-regkit {message}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="keras-regkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="train digits with and without penalties")
    demo_parser.add_argument("--quick", action="store_true", help="3 epochs, for a smoke test")
    demo_parser.add_argument("--epochs", type=_positive_int, default=30)
    inspect_parser = commands.add_parser("inspect", help="per-layer sparsity table of a saved model")
    inspect_parser.add_argument("path", help="a .keras file")
    inspect_parser.add_argument("--json", action="store_true", help="machine-readable output")
    inspect_parser.add_argument("--plot", metavar="FILE.png", help="write weight-magnitude histograms")
    inspect_parser.add_argument("--all-weights", action="store_true", help="biases and every other weight too")
    inspect_parser.add_argument("--threshold", type=float, default=1e-3, help="near-zero threshold (default 1e-3)")
    inspect_parser.add_argument("--relative", action="store_true", help="threshold relative to each weight's RMS")
    args = parser.parse_args(argv)
    return {"demo": demo, "inspect": inspect}[args.command](args)


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
