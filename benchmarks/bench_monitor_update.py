"""Cost of one SparsityMonitor update on a model with >= 10M parameters.

Prints, all measured in this process:
- one monitor update (on-device statistics + one host transfer), median;
- the naive alternative: `model.get_weights()` + a NumPy scan of the same
  statistics, median, and the speed-up over it (target >= 5x);
- one training epoch of the model, median, and the update's share of it at one
  update per epoch (target <= 1 %).

    python benchmarks/bench_monitor_update.py [--quick] [--samples N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_regkit.callbacks import SparsityMonitor  # noqa: E402


def naive_scan(model, threshold=1e-3):
    out = []
    for w in model.get_weights():
        finite = np.isfinite(w)
        a = np.abs(np.where(finite, w, 0))
        out.append(((w == 0).sum(), (a <= threshold).sum(), a.sum(), np.sqrt((a * a).sum()), (~finite).sum()))
    return out


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=8192, help="training samples per epoch")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    samples, repeats, epochs = (1024, 5, 2) if args.quick else (args.samples, args.repeats, 3)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((1024,)),
        keras.layers.Dense(4096, activation="relu"),
        keras.layers.Dense(2048, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(samples, 1024)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, size=samples)

    monitor = SparsityMonitor(weights="all")
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {}
    monitor._update(logs)  # first call traces the statistics function
    naive_scan(model)

    update = median_seconds(lambda: monitor._update({}), repeats)
    naive = median_seconds(lambda: naive_scan(model), repeats)
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # warm-up: traces the train step
    epoch = median_seconds(lambda: model.fit(x, y, batch_size=256, epochs=1, verbose=0), epochs)

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs")
    print(f"model: {model.count_params():,} parameters; epoch = {samples} samples, batch 256")
    print(f"monitor update (on device)      {update * 1e3:9.2f} ms")
    print(f"get_weights() + NumPy scan      {naive * 1e3:9.2f} ms   -> monitor is {naive / update:.1f}x faster (target >= 5x)")
    print(f"one training epoch              {epoch * 1e3:9.2f} ms   -> update = {update / epoch:.3%} of an epoch (target <= 1 %)")


if __name__ == "__main__":
    main()
