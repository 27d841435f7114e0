"""Sparsity vs. accuracy of `keras_regkit.shrink`, next to tfmot's pruning.

Trains the same MLP on the same data as `benchmarks/tfmot/bench_tfmot.py`
(Keras 3 here, tf_keras there), then, from a fresh copy of the baseline
weights each time, runs

    keras_regkit.shrink(model, x_train, y_train,
                        validation_data=(x_val, y_val), epochs=10,
                        monitor="val_accuracy", batch_size=64,
                        tolerance=..., strength=..., fine_tune_epochs=...)

for a small grid of guarded settings, plus one run per tfmot target with
`max_sparsity=target` and the guard off (tolerance 1.0), so the two compare
at exactly the same sparsity. It reports for each the exact-zero fraction
over all Dense kernels (biases excluded), the test accuracy and its delta in
percentage points vs. this script's own baseline. The tfmot rows are read
from `benchmarks/tfmot/tfmot_results.json` (their deltas are vs. tfmot's own
tf_keras baseline) and printed alongside.

Protocol (identical to bench_tfmot.py):

- digits: sklearn `load_digits()`, x / 16; `default_rng(0).permutation`, the
  first n // 5 (359) test, of the rest the first 10 % (143) validation, 1295
  train.
- mnist1d: `make_dataset(get_dataset_args())` (local, no download); train
  permuted with `default_rng(0)`, first 10 % (400) validation, 3600 train;
  scalar mean/std standardization from the 3600 training samples.
- Model Input -> Dense(300, relu) -> Dense(100, relu) -> Dense(10) logits,
  Adam(1e-3), SparseCategoricalCrossentropy(from_logits=True), batch 64,
  `keras.utils.set_random_seed(0)` and TF op determinism. Baseline: digits 40
  epochs, mnist1d 60 epochs.
- Each shrink run: clone the baseline, copy its weights, compile with a fresh
  Adam(1e-3), reseed (0), then `shrink(...)` with 10 epochs (fine-tuning
  included, as in tfmot's 10-epoch budget).

Note: the guard is the validation set (143 samples on digits: one sample is
0.7 pp, so tolerance 0.01 allows one mistake more than the baseline), while
the delta is measured on the test set.

Usage (from the repository root, in the project venv; needs mnist1d):

    python benchmarks/bench_shrink_quality.py            # ~5-6 min on 2 cores
    python benchmarks/bench_shrink_quality.py --quick    # smoke run, ~35 s
    python benchmarks/bench_shrink_quality.py --datasets digits --out /tmp/r.json
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Run from a checkout without installing the package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

SHRINK_EPOCHS = 10
TFMOT_JSON = os.path.join(_ROOT, "benchmarks", "tfmot", "tfmot_results.json")

# The guarded grid: every combination of these (8 runs per dataset).
TOLERANCES = [0.01, 0.02]
FINE_TUNE = [0, 3]
STRENGTHS = [1e-4, 1e-3]
# Matched to tfmot's targets: `max_sparsity` caps the cuts and the guard is
# off (tolerance 1.0), so each run ends at exactly that sparsity; the epochs
# after the cut fine-tune with the zeros held.
MATCHED = [0.8, 0.9, 0.95, 0.98]


# --------------------------------------------------------------------- data

from quality_protocol import (  # noqa: E402  (the shared data/model protocol)
    BASELINE_EPOCHS,
    BATCH_SIZE,
    LOADERS,
    SEED,
    accuracy,
    compile_model,
    kernel_sparsity,
    train_baseline,
)


def settings(quick):
    if quick:
        return [dict(tolerance=0.01, fine_tune_epochs=1, strength=1e-3)]
    guarded = [
        dict(tolerance=t, fine_tune_epochs=f, strength=s)
        for t, f, s in itertools.product(TOLERANCES, FINE_TUNE, STRENGTHS)
    ]
    matched = [dict(tolerance=1.0, fine_tune_epochs=0, strength=1e-4, max_sparsity=m) for m in MATCHED]
    return guarded + matched


# -------------------------------------------------------------------- bench
def run_dataset(name, args, keras, rk):
    t0 = time.perf_counter()
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS[name]()
    steps = math.ceil(len(x) / BATCH_SIZE)
    base_epochs = 3 if args.quick else BASELINE_EPOCHS[name]
    shrink_epochs = 3 if args.quick else SHRINK_EPOCHS
    print(
        f"\n[{name}] train {x.shape} val {x_val.shape} test {x_test.shape}, "
        f"{steps} steps/epoch (data {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )

    base, t_base = train_baseline(keras, name, x, y, x_val, y_val, quick=args.quick)
    base_acc = accuracy(base, x_test, y_test)
    base_val = accuracy(base, x_val, y_val)
    base_sp, base_layers = kernel_sparsity(keras, base)
    rows = [{
        "dataset": name, "method": "baseline (keras 3)", "settings": None,
        "kernel_zero_frac": base_sp, "kernel_zero_frac_per_layer": base_layers,
        "test_acc": base_acc, "val_acc": base_val, "delta_pp": 0.0,
        "epochs": base_epochs, "seconds": t_base,
    }]
    print(f"  baseline: test acc {base_acc:.4f}, val acc {base_val:.4f} ({t_base:.1f}s)", flush=True)
    base_weights = base.get_weights()

    for setting in settings(args.quick):
        keras.utils.set_random_seed(SEED)
        model = keras.models.clone_model(base)
        model.set_weights(base_weights)
        compile_model(keras, model)
        t0 = time.perf_counter()
        result = rk.shrink(
            model, x, y, validation_data=(x_val, y_val), epochs=shrink_epochs,
            monitor="val_accuracy", batch_size=BATCH_SIZE, **setting,
        )
        seconds = time.perf_counter() - t0
        acc = accuracy(model, x_test, y_test)
        sp, sp_layers = kernel_sparsity(keras, model)
        rows.append({
            "dataset": name, "method": "keras_regkit.shrink", "settings": setting,
            "kernel_zero_frac": sp, "kernel_zero_frac_per_layer": sp_layers,
            "test_acc": acc, "val_acc": accuracy(model, x_val, y_val),
            "delta_pp": 100.0 * (acc - base_acc), "epochs": shrink_epochs,
            "outcome": result.outcome, "threshold": result.threshold,
            "accepted_epochs": len(result.accepted_epochs),
            "rejected_epochs": len(result.rejected_epochs),
            "seconds": seconds,
        })
        print(f"  {describe(setting)}: zeros {sp:.4f}, test acc {acc:.4f} "
              f"({result.outcome}, {len(result.accepted_epochs)} acc/"
              f"{len(result.rejected_epochs)} rej, {seconds:.1f}s)", flush=True)
    return rows


def describe(setting):
    if not setting:
        return "-"
    text = (f"tol={setting['tolerance']:g} ft={setting['fine_tune_epochs']} "
            f"str={setting['strength']:g}")
    if "max_sparsity" in setting:
        text += f" max={setting['max_sparsity']:g}"
    return text


def tfmot_rows(datasets):
    try:
        with open(TFMOT_JSON) as f:
            data = json.load(f)
    except FileNotFoundError:
        print(f"(no {TFMOT_JSON}; tfmot rows left out)")
        return []
    rows = []
    for r in data["results"]:
        if r["dataset"] not in datasets:
            continue
        rows.append({
            "dataset": r["dataset"],
            "method": "tfmot baseline (tf_keras)" if r["method"] == "baseline" else "tfmot",
            "settings": None if r["target"] is None else {"target": r["target"]},
            "kernel_zero_frac": r["kernel_zero_frac"], "test_acc": r["test_acc"],
            "val_acc": r.get("val_acc"), "delta_pp": r["delta_pp"],
        })
    return rows


def format_table(rows):
    head = ["dataset", "method", "settings", "kernel zeros", "test acc", "val acc", "delta pp"]
    body = []
    for r in rows:
        s = r["settings"]
        if s is None:
            settings_text = "-"
        elif "target" in s:
            settings_text = f"target={s['target']:.2f}"
        else:
            settings_text = describe(s)
        body.append([
            r["dataset"], r["method"], settings_text,
            f"{r['kernel_zero_frac']:.4f}", f"{r['test_acc']:.4f}",
            "-" if r.get("val_acc") is None else f"{r['val_acc']:.4f}",
            f"{r['delta_pp']:+.2f}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 baseline epochs, one 3-epoch shrink per dataset")
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)

    import tensorflow as tf
    import keras
    import keras_regkit as rk

    tf.config.experimental.enable_op_determinism()
    t_start = time.perf_counter()
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, args, keras, rk)
    total = time.perf_counter() - t_start

    tf_rows = tfmot_rows(args.datasets)
    ordered = []
    for name in args.datasets:
        ordered += [r for r in rows if r["dataset"] == name]
        ordered += [r for r in tf_rows if r["dataset"] == name]
    print("\n" + format_table(ordered))
    print("\nshrink deltas are vs. the Keras 3 baseline above; tfmot deltas vs. its own tf_keras baseline.")
    print(f"total {total:.1f}s")
    if args.out:
        out = {
            "benchmark": "keras_regkit.shrink quality",
            "quick": args.quick,
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "keras_regkit": rk.__version__,
                         "numpy": np.__version__},
            "total_seconds": total,
            "results": rows,
        }
        out_dir = os.path.dirname(args.out)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
