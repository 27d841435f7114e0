"""Is a structured shrink + `compact` model really smaller and faster?

For one MLP (sklearn digits; 64-512-256-10, `--mlp-units`) and one CNN
(MNIST-1D; three Conv1D of 128 filters and a Dense of 256, `--cnn-filters`),
in one process:

1. train a baseline;
2. `keras_regkit.shrink(..., granularity="unit")` for 30 epochs, which
   kills whole units / filters along its ramp (the last 20 % of the budget
   trains with them held). Each case has its target (`RECIPES`, the
   settings the README reports; `--sparsity` or `--tolerance` override
   them): 90 % of the MLP's hidden units, 85 % of the CNN's;
3. `keras_regkit.compact(model)` removes them.

It reports, for the baseline, the shrunk (still dense) model and the
compacted one: test accuracy, parameters, saved `.keras` file size, predict
latency at batch 1 and 256 (a traced `model(x)` call, median of many; the
same harness for all three, interleaved) and throughput at batch 4096,
where the fixed cost of a call (about 0.3 ms here, most of the batch-1
latency) no longer hides the arithmetic. The ratios are against the shrunk
model, which is what `compact` is applied to: it has the same accuracy as
the compacted one to float precision, so the ratio is the gain of removing
the dead structure alone.

Usage (from the repository root, in the project venv; needs scikit-learn and
mnist1d, both in the `demo` extra):

    python benchmarks/bench_compact.py            # ~2 min on 2 cores
    python benchmarks/bench_compact.py --seeds 5  # ~10 min: median and range
    python benchmarks/bench_compact.py --quick    # smoke run

`--validation-fraction` (of the training split, 0.1 by default: 143 digits,
400 MNIST-1D samples) sets the validation data of the tolerance mode's one
final check.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from common.measure import interleaved_seconds, saved_size
from common.models import CNN_FILTERS, MLP_UNITS, build_cnn, compile_model
from common.protocol import LOADERS, SEED, VALIDATION_FRACTION, accuracy, datasets
from common.reporting import write_json

from keras_regkit.demo import deployable_copy

SHRINK_EPOCHS = 30
THROUGHPUT_BATCH = 4096
BATCH_SIZE = 64


def build_mlp(keras, shape, units=MLP_UNITS):
    return datasets.mlp(keras, shape[0], units, name="mlp")


CASES = {
    "mlp": ("digits", build_mlp, 40),
    "cnn": ("mnist1d", build_cnn, 30),
}

# The shrink settings each case runs with unless flags say otherwise: the
# fraction of hidden units to remove (README).
RECIPES = {
    "mlp": {"sparsity": 0.9},
    "cnn": {"sparsity": 0.85},
}


def latencies(tf, models, batch, repeats, calls):
    """Median seconds per call of each model's traced forward pass on a batch."""
    x = tf.random.normal((batch,) + tuple(models[0].input_shape[1:]), seed=SEED)
    functions = [tf.function(lambda v, m=m: m(v, training=False)) for m in models]
    rounds = interleaved_seconds([lambda f=f: f(x) for f in functions], repeats, calls)
    return [statistics.median(r) for r in rounds]


def recipe(name, args):
    """The case's shrink settings, with any given on the command line."""
    if args.sparsity is not None:
        return {"sparsity": args.sparsity}
    if args.tolerance is not None:
        return {"tolerance": args.tolerance}
    return dict(RECIPES[name])


def run_case(name, args, keras, tf, rk, seed=SEED):
    """One case with one seed for the weights and the shuffling (the data
    split is the protocol's, always the same)."""
    dataset, build, epochs = CASES[name]
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS[dataset](args.validation_fraction)
    keras.utils.set_random_seed(seed)
    model = build(keras, x.shape[1:], args.mlp_units if name == "mlp" else args.cnn_filters)
    compile_model(keras, model)
    t0 = time.perf_counter()
    model.fit(x, y, epochs=2 if args.quick else epochs, batch_size=BATCH_SIZE, verbose=0)
    base_acc = accuracy(model, x_test, y_test)
    baseline = deployable_copy(model)
    print(f"\n[{name} on {dataset}, seed {seed}, {model.count_params():,} params, {len(x_val)} validation "
          f"samples] baseline test acc {base_acc:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)

    t0 = time.perf_counter()
    settings = recipe(name, args)
    result = rk.shrink(
        model, x, y, validation_data=(x_val, y_val), epochs=args.epochs,
        **settings,
        granularity="unit", batch_size=BATCH_SIZE,
    )
    shrunk_acc = accuracy(model, x_test, y_test)
    print(f"  shrink {settings} ({time.perf_counter() - t0:.0f}s): {result.outcome}, {result.cuts} cuts, "
          f"dead units { {k: v for k, v in result.dead_units.items()} }", flush=True)
    compacted = rk.compact(model)
    small = compacted.model
    small_acc = accuracy(small, x_test, y_test)
    max_diff = float(np.max(np.abs(np.asarray(small(x_test)) - np.asarray(model(x_test)))))

    models = {"baseline": baseline, "shrunk": model, "compacted": small}
    with tempfile.TemporaryDirectory() as folder:
        sizes = {k: saved_size(m, folder, k) for k, m in models.items()}
    # The fixed cost of a call, with next to no arithmetic: no model of this
    # input can be faster at batch 1 than this.
    floor = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(1)], name="call_floor")
    *lat1, floor_b1 = latencies(tf, list(models.values()) + [floor], 1, args.repeats, 200)
    lat1 = dict(zip(models, lat1))
    lat256 = dict(zip(models, latencies(tf, list(models.values()), 256, args.repeats, 50)))
    big = dict(zip(models, latencies(tf, list(models.values()), THROUGHPUT_BATCH, args.repeats, 5)))
    rows = {}
    for key, m in models.items():
        rows[key] = {
            "test_acc": {"baseline": base_acc, "shrunk": shrunk_acc, "compacted": small_acc}[key],
            "params": int(m.count_params()),
            "file_bytes": sizes[key],
            "latency_b1_ms": 1e3 * lat1[key],
            "latency_b256_ms": 1e3 * lat256[key],
            "throughput_per_s": THROUGHPUT_BATCH / big[key],
        }
    ratios = {
        "speedup_b1": lat1["shrunk"] / lat1["compacted"],
        "call_floor_b1_ms": 1e3 * floor_b1,
        "most_possible_speedup_b1": lat1["shrunk"] / floor_b1,
        "speedup_b256": lat256["shrunk"] / lat256["compacted"],
        "throughput_ratio": big["shrunk"] / big["compacted"],
        "file_ratio": sizes["shrunk"] / sizes["compacted"],
        "param_ratio": rows["shrunk"]["params"] / rows["compacted"]["params"],
        "acc_delta_pp_vs_baseline": 100 * (small_acc - base_acc),
        "max_output_diff_compacted_vs_shrunk": max_diff,
    }
    print(f"  {'model':<10} {'test acc':>8} {'params':>9} {'file KB':>8} {'b1 ms':>7} {'b256 ms':>8} {'samples/s':>10}")  # at THROUGHPUT_BATCH
    for key, r in rows.items():
        print(f"  {key:<10} {r['test_acc']:>8.4f} {r['params']:>9,} {r['file_bytes'] / 1024:>8.1f} "
              f"{r['latency_b1_ms']:>7.3f} {r['latency_b256_ms']:>8.3f} {r['throughput_per_s']:>10,.0f}")
    print(f"  compacted vs shrunk: {ratios['speedup_b1']:.2f}x faster at batch 1, "
          f"{ratios['speedup_b256']:.2f}x at 256, {ratios['throughput_ratio']:.2f}x throughput at "
          f"{THROUGHPUT_BATCH}, {ratios['file_ratio']:.2f}x smaller file, "
          f"{ratios['param_ratio']:.2f}x fewer params; accuracy {ratios['acc_delta_pp_vs_baseline']:+.2f} pp "
          f"vs baseline; outputs differ by <= {max_diff:.2g}", flush=True)
    print(f"  batch 1: a call costs at least {1e3 * floor_b1:.3f} ms here (a one-unit Dense model), "
          f"so no compacting can make the shrunk model more than {ratios['most_possible_speedup_b1']:.2f}x faster")
    if compacted.skipped:
        print(f"  left as they were: {compacted.skipped}")
    return {"case": name, "dataset": dataset, "seed": seed, "validation_samples": len(x_val), "shrink": settings,
            "rows": rows, "ratios": ratios,
            "dead_units": {k: list(v) for k, v in result.dead_units.items()},
            "cuts": result.cuts, "unit_sparsity": result.unit_sparsity}


def summarize(results):
    """Median and range over seeds of each case's ratios."""
    print(f"\nover {len({r['seed'] for r in results})} seeds: median [min, max]")
    for case in dict.fromkeys(r["case"] for r in results):
        runs = [r["ratios"] for r in results if r["case"] == case]
        for key in ("speedup_b1", "speedup_b256", "throughput_ratio", "file_ratio", "param_ratio",
                    "acc_delta_pp_vs_baseline"):
            values = sorted(run[key] for run in runs)
            print(f"  {case:<4} {key:<25} {statistics.median(values):7.2f} [{values[0]:.2f}, {values[-1]:.2f}]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    # Unset, each case takes its RECIPES value.
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, help="fraction of hidden units to remove")
    target.add_argument("--tolerance", type=float, help="tolerance mode: the allowed top-1 accuracy drop")
    parser.add_argument("--epochs", type=int, default=SHRINK_EPOCHS, help="shrink epochs")
    parser.add_argument("--validation-fraction", type=float, default=VALIDATION_FRACTION,
                        help="of the training split, held out for the guard")
    parser.add_argument("--mlp-units", type=int, nargs="+", default=list(MLP_UNITS), help="hidden widths")
    parser.add_argument("--cnn-filters", type=int, default=CNN_FILTERS,
                        help="filters per conv (the Dense layer has twice as many units)")
    parser.add_argument("--seeds", type=int, default=1, help="run each case with this many seeds")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="2 + 3 epochs, few repeats")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 3, 3

    import keras
    import tensorflow as tf

    import keras_regkit as rk

    print(f"keras {keras.__version__}, tensorflow {tf.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus")
    results = [run_case(name, args, keras, tf, rk, SEED + i) for name in args.cases for i in range(args.seeds)]
    if args.seeds > 1:
        summarize(results)
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "cases", "seeds")}
        write_json(args.out, [dict(r, settings=settings) for r in results])
    return results


if __name__ == "__main__":
    main()
