"""Sparsity vs. test accuracy of `keras_regkit.shrink`, over seeds, next to
TF-MOT's pruning and to the shrink as it was before v2.

Same MLP, data and splits as `benchmarks/tfmot/bench_tfmot.py` (the shared
`common/protocol.py`): a 300-100 MLP on sklearn digits and MNIST-1D, Adam
1e-3, batch 64, trained from scratch per seed (40 / 60 epochs), then from a
copy of those weights *and optimizer state* (as a user's `shrink` after
`fit` has) a 10-epoch shrink:

- sparsity mode: `shrink(model, x, y, sparsity=s, epochs=10)` at each level;
- tolerance mode: `shrink(model, x, y, tolerance=t, validation_data=(x_val,
  y_val), epochs=10)`.

Reported per run: exact zeros over the Dense kernels (biases excluded), test
accuracy change in percentage points against the seed's own baseline, wall
time of the shrink divided by 10 plain epochs of `fit` from the same state,
with the same validation data (timed in the same process). Summaries: median and worst (lowest) change
over seeds. TF-MOT's rows come from `benchmarks/results/tfmot_results.json`
(its own venv; its best learning rate per dataset).

`--old-package DIR` runs the same protocol with the keras_regkit found in
DIR (a checkout of the commit before Shrink v2), with that version's API:
`max_sparsity=s, tolerance=1.0` for the levels and its validation-accuracy
guard (`monitor="val_accuracy"`, strength 1e-4 digits / 1e-3 MNIST-1D) for
the tolerances.

Usage (repository root, project venv with mnist1d):

    python benchmarks/bench_shrink_quality.py --seeds 5 --out benchmarks/results/shrink_quality_results.json
    git worktree add /tmp/regkit_old 9d1c316
    python benchmarks/bench_shrink_quality.py --seeds 5 --old-package /tmp/regkit_old \\
        --out benchmarks/results/shrink_quality_before_v2.json
    python benchmarks/bench_shrink_quality.py --table   # the README table from the JSON files
    python benchmarks/bench_shrink_quality.py --quick   # smoke run
    # distillation from the starting model, on and off (docs/benchmarks.md, "Distillation"):
    python benchmarks/bench_shrink_quality.py --datasets digits --seeds 5 --levels 0.97 0.98 0.99 \
        --tolerances 0.01 --distill on --out benchmarks/results/shrink_quality_distill_on.json
    # the tolerance rows again, the sparsity rows kept:
    python benchmarks/bench_shrink_quality.py --seeds 5 --levels \
        --sparsity-rows-from benchmarks/results/shrink_quality_results.json --out new.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from common import result_path
from common.protocol import BATCH_SIZE, LOADERS, SHRINK_EPOCHS, accuracy, plain_fit_seconds, resetter, train_baseline
from common.reporting import group, read_json, write_json

LEVELS = [0.80, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995]  # the frontier's levels
TOLERANCES = [0.01, 0.02]
NEW_JSON = result_path("shrink_quality_results.json")
OLD_JSON = result_path("shrink_quality_before_v2.json")
TFMOT_JSON = result_path("tfmot_results.json")
OLD_STRENGTH = {"digits": 1e-4, "mnist1d": 1e-3}


def settings(old: bool, name: str, levels, tolerances, factors=(None,)):
    """(mode, value, guard factor, shrink kwargs) of each run."""
    runs = []
    for level in levels:
        if old:
            runs.append(("sparsity", level, None, dict(tolerance=1.0, max_sparsity=level,
                                                         strength=OLD_STRENGTH[name], monitor="val_accuracy")))
        else:
            runs.append(("sparsity", level, None, dict(sparsity=level)))
    for tolerance in tolerances:
        if old:
            runs.append(("tolerance", tolerance, None, dict(tolerance=tolerance, strength=OLD_STRENGTH[name],
                                                             monitor="val_accuracy")))
            continue
        for factor in factors:
            kwargs = dict(tolerance=tolerance)
            if factor is not None:  # calibration of the guard's limit
                from keras_regkit.shrinking import AgreementGuard

                kwargs["guard"] = AgreementGuard(min(1.0, factor * tolerance))
            runs.append(("tolerance", tolerance, factor, kwargs))
    return runs


def run_dataset(name, seed, args, keras, rk, old):
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS[name]()
    model, _ = train_baseline(keras, name, x, y, x_val, y_val, quick=args.quick, seed=seed)
    base_acc = accuracy(model, x_test, y_test)
    reset = resetter(keras, model)
    epochs = 2 if args.quick else SHRINK_EPOCHS
    fit_seconds = plain_fit_seconds(model, reset, x, y, (x_val, y_val), epochs)

    rows = []
    for mode, value, factor, kwargs in settings(old, name, args.levels, args.tolerances,
                                                args.disagreement_per_tolerance or (None,)):
        reset()
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        if args.distill is not None:
            kwargs = {**kwargs, "distill": args.distill}
        result = rk.shrink(model, x, y, validation_data=(x_val, y_val), epochs=epochs,
                           batch_size=BATCH_SIZE, **kwargs)
        seconds = time.perf_counter() - start
        zeros = rk.sparsity_report(model).total.sparsity
        test_acc = accuracy(model, x_test, y_test)
        row = {
            "dataset": name, "seed": seed, "mode": mode, "value": value, "factor": factor,
            "kernel_zero_frac": zeros, "test_acc": test_acc, "baseline_test_acc": base_acc,
            "delta_pp": 100 * (test_acc - base_acc), "outcome": result.outcome,
            "seconds": seconds, "wall_ratio": seconds / fit_seconds, "distill": args.distill,
        }
        if not old:
            row.update(disagreement=result.disagreement, stopped_at=result.stopped_at, cuts=result.cuts,
                       checks=[[float(level), float(value), bool(held)] for level, value, held in result.levels])
        rows.append(row)
        print(f"{name} seed {seed} {mode} {value} {factor or ''}: zeros {zeros:.4f}, test {row['delta_pp']:+.2f} pp, "
              f"{result.outcome}, {seconds:.1f}s ({row['wall_ratio']:.2f}x fit)", flush=True)
    return rows


def summarize(rows):
    """(dataset, mode, value) -> median and worst of the change and zeros."""
    out = {}
    for key, runs in group(rows, lambda r: (r["dataset"], r["mode"], r["value"], r.get("factor"))).items():
        deltas = [r["delta_pp"] for r in runs]
        zeros = [r["kernel_zero_frac"] for r in runs]
        out[key] = {"median_pp": statistics.median(deltas), "worst_pp": min(deltas),
                    "median_zeros": statistics.median(zeros), "min_zeros": min(zeros),
                    "wall_ratio": statistics.median(r["wall_ratio"] for r in runs), "seeds": len(runs)}
    return out


def tfmot_summary():
    """(dataset, target) -> median/worst change at TF-MOT's best learning rate."""
    data = read_json(TFMOT_JSON)
    if data is None:
        return {}, {}
    best = {name: cell["lr"] for name, cell in data["summary"]["best_lr"].items()}
    runs = [r for r in data["runs"] if r.get("target") is not None and r.get("lr") == best.get(r["dataset"])]
    groups = group(runs, lambda r: (r["dataset"], r["target"]))
    return {key: {"median_pp": statistics.median(r["delta_pp"] for r in g), "worst_pp": min(r["delta_pp"] for r in g),
                  "median_zeros": statistics.median(r["kernel_zero_frac"] for r in g)}
            for key, g in groups.items()}, best


def frontier(summary, name, tolerance):
    """The highest level at which the sparsity mode keeps the median test
    change >= -t and the worst >= -(t + 0.5) points (None if none does)."""
    held = [level for (data, mode, level, _), s in summary.items()
            if data == name and mode == "sparsity"
            and s["median_pp"] >= -100 * tolerance - 1e-9 and s["worst_pp"] >= -100 * tolerance - 0.5 - 1e-9]
    return max(held, default=None)


def table():
    new, old = read_json(NEW_JSON), read_json(OLD_JSON)
    tfmot, best = tfmot_summary()
    new_s = summarize(new["results"]) if new else {}
    old_s = summarize(old["results"]) if old else {}

    def cell(summary, key, zeros=False):
        s = summary.get(key)
        if s is None:
            return "-"
        text = f"{s['median_pp']:+.2f} / {s['worst_pp']:+.2f}"
        return f"{100 * s['median_zeros']:.1f} %: {text}" if zeros else text

    lines = ["Sparsity mode: test accuracy change, median / worst of the seeds, pp",
             "| data | level | shrink v2 | shrink before v2 | TF-MOT (best lr) |", "| --- | --- | --- | --- | --- |"]
    for name in LOADERS:
        for level in LEVELS:
            lines.append(f"| {name} | {level:.1%} | {cell(new_s, (name, 'sparsity', level, None))} | "
                         f"{cell(old_s, (name, 'sparsity', level, None))} | {cell(tfmot, (name, level))} |")
    lines += ["", "Tolerance mode: exact zeros (median; lowest seed): test change median / worst, pp",
              "| data | tolerance | frontier | tolerance mode |", "| --- | --- | --- | --- |"]
    for name in LOADERS:
        for tolerance in TOLERANCES:
            level = frontier(new_s, name, tolerance)
            edge = "-" if level is None else f"{level:.1%} ({cell(new_s, (name, 'sparsity', level, None))})"
            s = new_s.get((name, "tolerance", tolerance, None))
            mode = "-" if s is None else (f"{100 * s['median_zeros']:.1f} % ({100 * s['min_zeros']:.1f}): "
                                          f"{s['median_pp']:+.2f} / {s['worst_pp']:+.2f}")
            lines.append(f"| {name} | {tolerance} | {edge} | {mode} |")
    ratios = [s["wall_ratio"] for s in new_s.values()]
    if ratios:
        lines.append(f"\nWall time of a 10-epoch shrink / 10 plain epochs: median {statistics.median(ratios):.2f}, "
                     f"range {min(ratios):.2f}-{max(ratios):.2f}")
    if best:
        lines.append(f"TF-MOT's best learning rate: {best}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (the climb's constants were chosen on 5-9)")
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    p.add_argument("--levels", nargs="*", type=float, default=LEVELS)
    p.add_argument("--tolerances", nargs="*", type=float, default=TOLERANCES)
    p.add_argument("--old-package", default=None, help="a checkout of keras_regkit before Shrink v2")
    p.add_argument("--distill", type=lambda v: {"on": True, "off": False}.get(v) if v in ("on", "off") else float(v),
                   default=None, help="shrink(distill=...): on, off or a weight (default: the package's default)")
    p.add_argument("--disagreement-per-tolerance", type=float, nargs="+", default=None,
                   help="calibration: the guard's disagreement limit per unit of tolerance")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 baseline epochs, 2-epoch shrinks")
    p.add_argument("--table", action="store_true", help="print the README table from the JSON files")
    p.add_argument("--sparsity-rows-from", default=None,
                   help="a results JSON of the same seeds whose sparsity-mode rows to keep, with --levels and no "
                        "level (the baselines are deterministic: op determinism is on)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.old_package:
        sys.path.insert(0, os.path.abspath(args.old_package))
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_regkit as rk

    old = not hasattr(rk, "shrinking")
    print(f"keras_regkit from {os.path.dirname(rk.__file__)} ({'before v2' if old else 'v2'})")
    tf.config.experimental.enable_op_determinism()
    start = time.perf_counter()
    rows = []
    for name in args.datasets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows += run_dataset(name, seed, args, keras, rk, old)
    if args.sparsity_rows_from:
        kept = [r for r in read_json(args.sparsity_rows_from)["results"]
                if r["mode"] == "sparsity" and r["dataset"] in args.datasets]
        rows = kept + [r for r in rows if r["mode"] != "sparsity"]
    for (name, mode, value, factor), s in sorted(summarize(rows).items(), key=str):
        print(f"{name:8} {mode:9} {value:<5} {factor or '':<4} zeros {s['median_zeros']:.4f} (min {s['min_zeros']:.4f}) "
              f"change median {s['median_pp']:+.2f} worst {s['worst_pp']:+.2f} pp, wall {s['wall_ratio']:.2f}x")
    if args.out:
        write_json(args.out, {
            "benchmark": "keras_regkit.shrink quality", "implementation": "before v2" if old else "v2",
            "quick": args.quick, "seeds": args.seeds, "total_seconds": time.perf_counter() - start,
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "numpy": np.__version__},
            "results": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
