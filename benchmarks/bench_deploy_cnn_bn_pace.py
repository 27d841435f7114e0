"""Full int8 after a unit shrink, with the shrink's own BatchNormalization
pace (0.4.0: momentum at most 0.9 during the shrink) and with
`refresh_batch_norm` after it, on `MobileNetV2(alpha=0.35, weights=None)`
and digits upscaled to 32x32x3 (`bench_deploy_cnn.digits_images`).

Per seed: train dense (Adam 1e-3, `--epochs`), its inference accuracy
before and after `refresh_batch_norm` (in process, and on a
saved-and-reloaded copy), then `shrink(sparsity=0.5, granularity="unit",
epochs=6)` from the refreshed dense model; `compact`; and the same two
after a `refresh_batch_norm`. Each model is exported with
`export(int8=True, representative_data=512 training images,
check=test images)` (the default `min_agreement`; an `ExportCheckError`
is recorded as `passes: false`, the file is left in place and run).
Reported per model: Keras test accuracy, the int8 file's test accuracy
in LiteRT, top-1 agreement between them.

    python benchmarks/bench_deploy_cnn_bn_pace.py --seeds 0 1 --out benchmarks/results/deploy_cnn_bn_pace.json
"""

import argparse
import os
import tempfile
import time

import numpy as np

from bench_deploy_cnn import digits_images
from common.protocol import BATCH_SIZE
from common.reporting import write_json

CALIBRATION = 512


def run_seed(keras, rk, seed, epochs, folder):
    from keras_regkit.demo import deployable_copy

    (x, y), (x_val, y_val), (x_test, y_test) = digits_images(32)

    def accuracy(model):
        return float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))

    def int8_row(model, name):
        path = os.path.join(folder, f"s{seed}_{name}.tflite")
        predicted = model.predict(x_test, verbose=0).argmax(-1)
        passes = True
        try:
            rk.export(model, path, int8=True, representative_data=x[:CALIBRATION], check=x_test)
        except rk.deploy.ExportCheckError:
            passes = False
        got = rk.deploy.Runtime(path)(x_test).argmax(-1)
        row = {"keras_test_acc": float(np.mean(predicted == y_test)), "int8_test_acc": float(np.mean(got == y_test)),
               "top1_agreement": float(np.mean(got == predicted)), "passes_check": passes}
        print(f"[seed {seed}] {name:<20} {row}", flush=True)
        return row

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, verbose=0)
    result = {"seed": seed, "epochs": epochs,
              "dense_train_mode_test_acc": float(np.mean(np.asarray(model(x_test, training=True)).argmax(-1) == y_test)),
              "dense_before_refresh_test_acc": accuracy(model)}
    saved = os.path.join(folder, f"s{seed}_dense.keras")
    model.save(saved)
    reloaded = keras.models.load_model(saved, compile=False)
    rk.deploy.refresh_batch_norm(reloaded, x)
    result["dense_refreshed_reloaded_test_acc"] = accuracy(reloaded)
    rk.deploy.refresh_batch_norm(model, x)
    result["dense_refreshed_test_acc"] = accuracy(model)
    result["dense"] = int8_row(deployable_copy(model), "dense")
    start = time.perf_counter()
    rk.shrink(model, x, y, sparsity=0.5, granularity="unit", epochs=6, batch_size=BATCH_SIZE,
              validation_data=(x_val, y_val))
    result["shrink_s"] = time.perf_counter() - start
    result["momentum_after_shrink"] = sorted({layer.momentum for layer in model.layers
                                              if isinstance(layer, keras.layers.BatchNormalization)})
    result["stale_after_shrink"] = rk.deploy.stale_batch_norm(model, x[:256])
    result["shrunk"] = int8_row(deployable_copy(model), "shrunk")
    result["compacted"] = int8_row(rk.compact(deployable_copy(model)).model, "compacted")
    rk.deploy.refresh_batch_norm(model, x)
    result["shrunk_refreshed"] = int8_row(deployable_copy(model), "shrunk_refreshed")
    result["compacted_refreshed"] = int8_row(rk.compact(deployable_copy(model)).model, "compacted_refreshed")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_regkit as rk

    results = {"versions": {"keras": keras.__version__, "tensorflow": tf.__version__}, "seeds": []}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            results["seeds"].append(run_seed(keras, rk, seed, args.epochs, folder))
    if args.out:
        write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
