"""Cost of one SparsityMonitor update, against a hand-written scan.

For two MLPs (12.6M and about 100k parameters), all in this process:
- one monitor update (`SparsityMonitor._update`: on a CPU the NumPy path
  that reads the weights in place; on an accelerator the on-device path);
- the naive alternative a user would write: `model.get_weights()` + a NumPy
  scan of the same statistics;
- the on-device (compiled) path, for reference;
- one training epoch, and the update's share of it at one update per epoch.

The three are timed interleaved (one of each per round, order rotated), and
each ratio is the median over rounds of (naive / monitor) in the same round,
with its p25-p75 spread. Target: ratio >= 1.0 on both models, update <= 1 %
of an epoch. Nothing here asserts on timing.

    python benchmarks/bench_monitor_update.py [--quick] [--samples N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common  # noqa: F401  (before Keras: this checkout's keras_regkit, TensorFlow quiet)

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


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _spread(values):
    return statistics.median(values), np.percentile(values, 25), np.percentile(values, 75)


def _mlp(inputs, hidden):
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(width, activation="relu") for width in hidden]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def measure(name, model, samples, repeats, epochs):
    inputs = model.inputs[0].shape[-1]
    x = np.random.default_rng(0).normal(size=(samples, inputs)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, size=samples)
    monitor = SparsityMonitor(weights="all")
    monitor.set_model(model)
    monitor.on_train_begin()
    values = [ref.variable.value for ref in monitor._stats.refs]
    candidates = {
        "monitor": lambda: monitor._update({}),
        "naive": lambda: naive_scan(model),
        "device": lambda: monitor._stats._compute_on_device(values),
    }
    for fn in candidates.values():
        fn()  # first calls trace the compiled path
    times = {k: [] for k in candidates}
    keys = list(candidates)
    for r in range(repeats):
        for k in keys[r % 3:] + keys[: r % 3]:
            times[k].append(_timed(candidates[k]))
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # warm-up: traces the train step
    epoch = statistics.median(
        _timed(lambda: model.fit(x, y, batch_size=256, epochs=1, verbose=0)) for _ in range(epochs)
    )
    update = statistics.median(times["monitor"])
    print(f"\n{name}: {model.count_params():,} parameters; epoch = {samples} samples, batch 256")
    for k, label in (("monitor", "monitor update (host path on CPU)"), ("naive", "get_weights() + NumPy scan"), ("device", "on-device path")):
        med, lo, hi = _spread([t * 1e3 for t in times[k]])
        print(f"  {label:36s} {med:9.2f} ms  (p25-p75 {lo:.2f}-{hi:.2f})")
    for k in ("naive", "device"):
        med, lo, hi = _spread([a / b for a, b in zip(times[k], times["monitor"])])
        print(f"  {k} / monitor, paired:               {med:6.2f}x (p25-p75 {lo:.2f}-{hi:.2f})"
              + ("   target >= 1.0" if k == "naive" else ""))
    print(f"  one training epoch                   {epoch * 1e3:9.2f} ms   -> update = {update / epoch:.3%} of an epoch (target <= 1 %)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=8192, help="training samples per epoch")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    samples, repeats, epochs = (1024, 5, 2) if args.quick else (args.samples, args.repeats, 3)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs")
    keras.utils.set_random_seed(0)
    measure("MLP 1024-4096-2048-10", _mlp(1024, (4096, 2048)), samples, repeats, epochs)
    measure("MLP 256-256-128-10", _mlp(256, (256, 128)), samples, repeats, epochs)


if __name__ == "__main__":
    main()
