"""The cause of the full-int8 loss after a unit shrink, shown on one model:
dead units' small constants read by zero-padded depthwise convolutions.

Trains `MobileNetV2(alpha=0.35)` on digits at `--size` as
`bench_deploy_cnn.py` does (its functions), shrinks it with
`granularity="unit"`, and saves the Keras models under `--models` (a later
run with `--reuse` starts from them). Then, on that shrunk model:

- the dead units whose constants only depthwise convolutions read, and how
  far below the top of their tensor's range those constants sit (the factor
  `lift_dead_constants` lifts them by, read from the depthwise slices it
  divides);
- full-int8 top-1 agreement with the float model and test accuracy in
  LiteRT of `compact(shrunk)` without and with the lift (`export` lifts on
  its calibration samples; "without" turns that off), calibrated on 200
  training images, checked on the 359 test images, and of the dense model;
- how far the lift moves the float outputs (it should not);
- with `--qat`, the same for the quantization-aware shrink (`int8=True`)
  from the same trained state.

    nice -n 10 python benchmarks/diag_dead_constants.py --seed 0 --models /tmp/dead_constants \\
        --out benchmarks/results/deploy_cnn_dead_constants.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
from unittest import mock

import numpy as np

from common.reporting import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--shrink-epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--models", default="dead_constants_models", help="folder for the Keras models and files")
    parser.add_argument("--reuse", action="store_true", help="start from the models an earlier run saved")
    parser.add_argument("--qat", action="store_true", help="also the quantization-aware shrink")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import bench_deploy_cnn as bench
    import keras_regkit as rk
    from keras_regkit.pruning import dead_constants

    tf.get_logger().setLevel("ERROR")
    os.makedirs(args.models, exist_ok=True)
    path = lambda name: os.path.join(args.models, name)  # noqa: E731
    if not args.reuse:
        settings = argparse.Namespace(size=args.size, epochs=args.epochs, shrink_epochs=args.shrink_epochs,
                                      sparsity=args.sparsity, tolerance=0.01, modes=["qat"] if args.qat else [])
        models, (x, y), (x_test, y_test) = bench.make_models(keras, rk, "mobilenetv2", args.seed, settings)
        for name in ("dense", "shrunk", "compact_qat"):
            if name in models:
                models[name].save(path(f"{name}.keras"))
        np.savez(path("data.npz"), x=x, x_test=x_test, y_test=y_test)
    data = np.load(path("data.npz"))
    x, x_test, y_test = data["x"], data["x_test"], data["y_test"]
    calibration = x[:bench.CALIBRATION]

    def int8_row(model, name, lift=True):
        file = path(f"{name}_int8.tflite")
        # Without: `export` as before 0.6.0, which converted the model as it was.
        unlifted = mock.patch.object(dead_constants, "lifted", lambda model, x: contextlib.nullcontext(0))
        with contextlib.nullcontext() if lift else unlifted:
            result = rk.export(model, file, int8=True, representative_data=calibration, check=x_test,
                               min_agreement=0.0)
        row = {"model": name, "top1_agreement": result.top1_agreement,
               "keras_test_acc": bench.accuracy(model.predict(x_test, verbose=0), y_test),
               "test_acc": bench.accuracy(rk.deploy.Runtime(file)(x_test), y_test)}
        print(f"{name:<20} full int8: agreement {row['top1_agreement']:.4f}, accuracy {row['test_acc']:.4f} "
              f"(Keras {row['keras_test_acc']:.4f})", flush=True)
        return row

    rows = [int8_row(keras.models.load_model(path("dense.keras")), "dense")]
    shrunk = keras.models.load_model(path("shrunk.keras"))
    reference = shrunk.predict(x_test, verbose=0)
    rows.append(int8_row(rk.compact(shrunk).model, "compact", lift=False))

    depthwise = [layer for layer in shrunk.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    kernels = [keras.ops.convert_to_numpy(layer.kernel).copy() for layer in depthwise]
    lifted = dead_constants.lift_dead_constants(shrunk, x)  # in place here, to read the factors
    factors = []
    for layer, before in zip(depthwise, kernels):
        after = keras.ops.convert_to_numpy(layer.kernel)
        for channel in range(before.shape[-2]):
            moved = (before[..., channel, :] != 0) & (after[..., channel, :] != before[..., channel, :])
            if moved.any():
                factors.append(float(np.median(before[..., channel, :][moved] / after[..., channel, :][moved])))
    float_change = float(np.max(np.abs(shrunk.predict(x_test, verbose=0) - reference)))
    rows.append(int8_row(rk.compact(shrunk).model, "compact_lifted"))
    summary = {"dead_units": int(sum(d for d, _ in rk.dead_units(shrunk).values())),
               "constants_lifted": lifted, "lift_factor_median": float(np.median(factors)),
               "lift_factor_min": float(np.min(factors)), "lift_factor_max": float(np.max(factors)),
               "float_output_max_abs_change": float_change}
    print(f"{summary['dead_units']} dead units; {lifted} constants read by depthwise convolutions lifted, by "
          f"x{summary['lift_factor_median']:.0f} median (x{summary['lift_factor_min']:.0f}-"
          f"x{summary['lift_factor_max']:.0f}); float outputs moved by at most {float_change:.1e}")
    if os.path.exists(path("compact_qat.keras")):
        qat = keras.models.load_model(path("compact_qat.keras"))
        rows.append(int8_row(qat, "compact_qat", lift=False))
        rows.append(int8_row(qat, "compact_qat_lifted"))
    report = {"settings": vars(args), "summary": summary, "rows": rows}
    if args.out:
        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
