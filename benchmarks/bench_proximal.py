"""Proximal L1 against L1 as a gradient term: exact zeros from training alone.

For each data set (digits, MNIST-1D; the demo's 300-100 MLP and the shared
protocol of benchmarks/common/protocol.py), each optimizer (Adam 1e-3 as in
the protocol; SGD 0.05 with momentum 0.9) and each seed, trains the MLP for
the protocol's epochs with every kernel penalised by

- nothing (the reference),
- `L1(strength)`, a gradient term in the loss,
- `L1(strength, proximal=True)` with `ProximalUpdate` (a soft-threshold
  after each optimizer step, preconditioned for Adam),
- with `--then-hold`, also "proximal+hold": the proximal penalty for all
  but the last quarter of the epochs, then the penalty removed and its
  zeros held (`prune(threshold=0, hold=True)`) while the rest recovers
  (the lasso's debiasing, still training alone: no shrink, no new cuts),

and records the exact-zero fraction of the kernels at the end of training and
the test accuracy. No shrink: every zero comes from training.

Feature selection (`--features`): scikit-learn's `make_classification`
with 5 informative features among 30 (the rest noise, unshuffled so the
informative ones are the first five), a 30-64-2 MLP whose first kernel has
`GroupLasso(strength, axis=0, proximal=True)` (one group per input), Adam;
the fraction of noise inputs dropped (`sparsity_report(...).dropped_inputs`)
and of informative ones kept, and the test accuracy.

Then it times the train step (`fit` over a fixed number of steps, rounds
interleaved; benchmarks/common/measure.py) of the proximal penalty against the same
penalty as a gradient term, on the same MLP and on a wider one
(784-1024-512-10), for Adam and SGD. Timings on a shared 2-core machine are
indicative only. Nothing here asserts.

Usage:

    python benchmarks/bench_proximal.py                       # all, ~20 min on 2 cores
    python benchmarks/bench_proximal.py --quick               # smoke run
    python benchmarks/bench_proximal.py --datasets digits --seeds 0 1 2 --no-timing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import common  # before Keras: this checkout's keras_regkit, TensorFlow quiet

import keras
import numpy as np

import keras_regkit as rk
from common import measure, protocol
from common.reporting import write_json

STRENGTHS = {"adam": (1e-5, 1e-4, 3e-4, 1e-3), "sgd": (1e-3, 3e-3, 1e-2)}


def make_optimizer(kind):
    if kind == "adam":
        return keras.optimizers.Adam(1e-3)  # the protocol's
    return keras.optimizers.SGD(0.05, momentum=0.9)


def kernels_zero_fraction(model):
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    return sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)


def train(data, optimizer_kind, method, strength, seed, epochs):
    (x, y), _, (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = protocol.build_mlp(keras, x.shape[1])
    callbacks = []
    proximal = method.startswith("proximal")
    if method != "none":
        rk.apply_regularizers(model, {"*": rk.regularizers.L1(strength, proximal=proximal)})
        if proximal:
            callbacks.append(rk.callbacks.ProximalUpdate())
    model.compile(make_optimizer(optimizer_kind), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    penalised = epochs - epochs // 4 if method == "proximal+hold" else epochs
    fit = dict(batch_size=protocol.BATCH_SIZE, shuffle=True, verbose=0)
    model.fit(x, y, epochs=penalised, callbacks=callbacks, **fit)
    if method == "proximal+hold":
        rk.remove_regularizers(model)
        rk.bind_proximal(model)  # takes the proximal step off
        rk.prune(model, threshold=0.0, hold=True)
        model.fit(x, y, epochs=epochs, initial_epoch=penalised, **fit)
    return {
        "optimizer": optimizer_kind, "method": method, "strength": strength, "seed": seed,
        "zeros": kernels_zero_fraction(model), "test_acc": protocol.accuracy(model, x_test, y_test),
        "seconds": time.perf_counter() - start,
    }


def quality(names, seeds, quick, out, then_hold=False, optimizers=("adam", "sgd")):
    rows = []
    for name in names:
        data = protocol.LOADERS[name]()
        epochs = 3 if quick else protocol.BASELINE_EPOCHS[name]
        for seed in seeds:
            for kind in optimizers:
                methods = ("gradient", "proximal") + (("proximal+hold",) if then_hold else ())
                runs = [("none", 0.0)] + [(m, s) for s in STRENGTHS[kind] for m in methods]
                for method, strength in runs:
                    row = {"dataset": name, **train(data, kind, method, strength, seed, epochs)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with open(out, "w") as f:
                        json.dump({"quality": rows}, f, indent=1)
    return rows


def summary(rows):
    """Median over seeds (and the worst seed) per dataset/optimizer/method/strength."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["optimizer"], row["method"], row["strength"]), []).append(row)
    lines = ["dataset  optimizer  method        strength  seeds  exact zeros (median, min)  test acc (median, min)  vs none"]
    for (name, kind, method, strength), group in groups.items():
        reference = groups.get((name, kind, "none", 0.0))
        reference_acc = statistics.median(r["test_acc"] for r in reference) if reference else float("nan")
        zeros = [r["zeros"] for r in group]
        accs = [r["test_acc"] for r in group]
        lines.append(
            f"{name:8} {kind:9} {method:13} {strength:8.0e}  {len(group):5}  "
            f"{statistics.median(zeros):10.1%} {min(zeros):8.1%}      "
            f"{statistics.median(accs):8.3f} {min(accs):7.3f}      {statistics.median(accs) - reference_acc:+.3f}"
        )
    return "\n".join(lines)


def feature_selection(seeds, quick, strengths=(3e-3, 1e-2, 3e-2)):
    from sklearn.datasets import make_classification

    informative, features = 5, 30
    rows = []
    for seed in seeds:
        x, y = make_classification(n_samples=2000, n_features=features, n_informative=informative,
                                   n_redundant=0, n_repeated=0, shuffle=False, random_state=seed)
        # Unshuffled, the samples come grouped by class: shuffle them (only).
        order = np.random.default_rng(seed).permutation(len(x))
        x, y = x[order].astype("float32"), y[order].astype("int32")
        (x, x_test), (y, y_test) = (x[:1500], x[1500:]), (y[:1500], y[1500:])
        for strength in (0.0,) + tuple(strengths):
            keras.utils.set_random_seed(seed)
            regularizer = rk.regularizers.GroupLasso(strength, axis=0, proximal=True) if strength else None
            model = keras.Sequential([keras.Input((features,)),
                                      keras.layers.Dense(64, activation="relu", kernel_regularizer=regularizer),
                                      keras.layers.Dense(2)])
            model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, batch_size=64, epochs=3 if quick else 40, verbose=0,
                      callbacks=[rk.callbacks.ProximalUpdate()] if strength else [])
            (dropped, _), = rk.sparsity_report(model).dropped_inputs.values()
            rows.append({
                "seed": seed, "strength": strength,
                "noise_dropped": sum(i >= informative for i in dropped) / (features - informative),
                "informative_kept": sum(i not in dropped for i in range(informative)) / informative,
                "test_acc": protocol.accuracy(model, x_test, y_test),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def timing(quick, steps, repeats):
    """Seconds per train step, proximal over gradient term, per MLP and optimizer."""
    rng = np.random.default_rng(0)
    results = []
    shapes = {"digits MLP 64-300-100-10": (64, (300, 100)), "wide MLP 784-1024-512-10": (784, (1024, 512))}
    for label, (features, units) in shapes.items():
        batch = 64 if features == 64 else 128
        x = rng.normal(size=(batch * steps, features)).astype("float32")
        y = rng.integers(0, 10, size=len(x)).astype("int32")
        for kind in ("adam", "sgd"):
            fits = []
            for method in ("gradient", "proximal"):
                keras.utils.set_random_seed(0)
                model = protocol.datasets.mlp(keras, features, units)
                rk.apply_regularizers(model, {"*": rk.regularizers.L1(1e-4, proximal=method == "proximal")})
                model.compile(make_optimizer(kind), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                if method == "proximal":
                    rk.bind_proximal(model)
                fits.append(lambda model=model: model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False))
            rounds = measure.interleaved_seconds(fits, repeats=2 if quick else repeats, calls=1, warmup=2)
            gradient, prox = (np.array(r) / steps for r in rounds)
            paired = prox / gradient
            results.append({
                "model": label, "optimizer": kind, "backend": keras.backend.backend(),
                "gradient_ms": 1e3 * float(np.median(gradient)), "proximal_ms": 1e3 * float(np.median(prox)),
                "ratio_median": float(np.median(paired)),
                "ratio_p25": float(np.percentile(paired, 25)), "ratio_p75": float(np.percentile(paired, 75)),
                "ratio_of_fastest": float(prox.min() / gradient.min()),
            })
            print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(protocol.datasets.NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--features", action="store_true", help="only the feature-selection benchmark")
    parser.add_argument("--then-hold", action="store_true", help="also proximal, then its zeros held")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd"])
    parser.add_argument("--steps", type=int, default=30, help="train steps per timed fit")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds")
    parser.add_argument("--out", default=common.result_path("proximal_results.json"))
    args = parser.parse_args(argv)
    results = {}
    if args.features:
        results["features"] = feature_selection(args.seeds, args.quick)
        write_json(args.out, results)
        return 0
    if not args.no_quality:
        results["quality"] = quality(args.datasets, args.seeds, args.quick, args.out, args.then_hold, args.optimizers)
        print(summary(results["quality"]))
    if not args.no_timing:
        results["timing"] = timing(args.quick, args.steps, args.repeats)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
