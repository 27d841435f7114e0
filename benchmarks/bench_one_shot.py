"""One-shot pruning without fine-tuning: magnitude vs Wanda vs weight
reconstruction (SparseGPT, `rk.pruning.prune_reconstructed`), issue #39.

Models (trained here per seed, benchmarks/common/protocol.py): the 300-100
MLP on digits and on MNIST-1D (40 / 60 epochs), and the MNIST-1D CNN of
bench_patterns.py (32 filters, 30 epochs). Each is cut at once, from the
same trained weights, to 50 %, 70 %, 90 % of its kernels' entries and to
2:4, and evaluated on the test split with no training after the cut:

- magnitude: `rk.prune(sparsity=s)` (one global threshold, the package's
  default);
- Wanda: `rk.prune(score="wanda")`, ranked globally (the package's default)
  and per output unit (the paper's);
- reconstruction: `prune_reconstructed(sparsity=s)`, each layer to the
  share of its entries one global magnitude threshold would take (its
  default, `allocation="global"`), and each layer to `s` (the paper's,
  `allocation="uniform"`);
- uneven allocations, for each of the three (`rk.prune(allocation=)`, at
  50/70/90 %): "owl" (OWL's outlier ratios, M = 5, lambda = 0.08, around
  `s`) and "sensitivity" (each layer pruned alone, its change of the
  outputs on the calibration inputs; spread 0.2 around the global
  magnitude shares).

Calibration: the first 1024 training inputs, for Wanda and reconstruction
alike (reconstruction needs at least as many as a layer has inputs: the
MLPs' second layer reads 300). Every kernel is pruned, the output layer
included; for 2:4 the kernels whose input axis does not split into groups
of 4 (the CNN's first convolution reads 1 channel) are left out of every
method alike.

Reported: test accuracy change against the unpruned model, in percentage
points, median and worst over seeds.

Run (about 25 min on two shared cores):
    python benchmarks/bench_one_shot.py [--seeds 3] [--out benchmarks/results/one_shot_results.json]
    python benchmarks/bench_one_shot.py --quick
    python benchmarks/bench_one_shot.py --methods "reconstruction sensitivity" --levels 90% --merge
      (only those rows; --merge replaces them in the JSON and keeps the others)
"""

from __future__ import annotations

import argparse
import time

from common import result_path
from common.models import build_cnn, compile_model
from common.protocol import BATCH_SIZE, LOADERS, accuracy, train_baseline
from common.reporting import group, read_json, spread, write_json

CALIBRATION_SAMPLES = 1024
LEVELS = (("50%", "weight", 0.5), ("70%", "weight", 0.7), ("90%", "weight", 0.9), ("2:4", "2:4", None))
METHODS = ("magnitude", "wanda", "wanda per output", "reconstruction", "reconstruction uniform",
           "magnitude owl", "wanda owl", "reconstruction owl",
           "magnitude sensitivity", "wanda sensitivity", "reconstruction sensitivity")
ENTRIES_ONLY = ("wanda per output", "reconstruction uniform", "magnitude owl", "wanda owl", "reconstruction owl",
                "magnitude sensitivity", "wanda sensitivity", "reconstruction sensitivity")


def groupable(layer) -> bool:
    kernel = getattr(layer, "kernel", None)
    return kernel is not None and len(kernel.shape) >= 2 and kernel.shape[-2] % 4 == 0


def trained(keras, case, seed, quick):
    """(model, ((x, y), (x_val, y_val), (x_test, y_test)))."""
    data = LOADERS["mnist1d" if case == "cnn" else case]()
    (x, y), (x_val, y_val), _ = data
    if case != "cnn":
        return train_baseline(keras, case, x, y, x_val, y_val, quick=quick, seed=seed)[0], data
    keras.utils.set_random_seed(seed)
    model = build_cnn(keras, x.shape[1:], filters=32)
    compile_model(keras, model)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3 if quick else 30, validation_data=(x_val, y_val), verbose=0)
    return model, data


def cut(rk, model, method, granularity, sparsity, calibration):
    layers = groupable if granularity == "2:4" else "*"
    allocation = next((name for name in ("owl", "sensitivity") if method.endswith(name)), "global")
    reads = allocation != "global" or not method.startswith("magnitude")
    if method.startswith("reconstruction"):
        if allocation != "global":
            return rk.prune(model, sparsity=sparsity, method="sparsegpt", calibration_data=calibration,
                            allocation=allocation)
        return rk.pruning.prune_reconstructed(model, sparsity=sparsity, granularity=granularity, layers=layers,
                                              calibration_data=calibration,
                                              allocation="uniform" if method.endswith("uniform") else "global")
    score = "magnitude" if method.startswith("magnitude") else "wanda"
    return rk.prune(model, sparsity=sparsity, granularity=granularity, layers=layers, score=score,
                    calibration_data=calibration if reads else None, allocation=allocation,
                    ranking="per_output" if method == "wanda per output" else "global")


def one_shot(keras, rk, case, seed, quick, methods=METHODS, levels=None):
    model, ((x, _), _, (x_test, y_test)) = trained(keras, case, seed, quick)
    calibration = x[:CALIBRATION_SAMPLES]
    base = accuracy(model, x_test, y_test)
    weights = model.get_weights()
    rows = []
    for label, granularity, sparsity in LEVELS:
        if levels and label not in levels:
            continue
        for method in methods:
            if method in ENTRIES_ONLY and granularity != "weight":
                continue
            model.set_weights(weights)
            start = time.perf_counter()
            result = cut(rk, model, method, granularity, sparsity, calibration)
            seconds = time.perf_counter() - start
            rows.append({"case": case, "seed": seed, "level": label, "method": method,
                         "change": 100.0 * (accuracy(model, x_test, y_test) - base), "base": 100.0 * base,
                         "zeros": result.sparsity, "seconds": seconds})
            print(f"  {case} seed {seed} {label:>4} {method:<26} {rows[-1]['change']:+7.2f} pp "
                  f"(zeros {result.sparsity:.3f}, {seconds:.1f} s)", flush=True)
    return rows


def summarize(rows):
    """"case | level | method" -> median and worst change over seeds."""
    return {" | ".join(key): {**spread(row["change"] for row in runs), "seeds": len(runs)}
            for key, runs in group(rows, lambda row: (row["case"], row["level"], row["method"])).items()}


def table(summary):
    """The README's table: one row per model and level, median (worst)."""
    lines = ["| model | level | " + " | ".join(METHODS) + " |", "|---|---|" + "---:|" * len(METHODS)]
    cells = {}
    for key, figures in summary.items():
        case, level, method = key.split(" | ")
        cells.setdefault((case, level), {})[method] = f"{figures['median']:+.1f} ({figures['worst']:+.1f})"
    for (case, level), by_method in cells.items():
        lines.append(f"| {case} | {level} | " + " | ".join(by_method.get(m, "–") for m in METHODS) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=["digits", "mnist1d", "cnn"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--levels", nargs="+", choices=[label for label, *_ in LEVELS])
    parser.add_argument("--merge", action="store_true", help="replace these rows in --out, keep the others")
    parser.add_argument("--out", default=result_path("one_shot_results.json"))
    args = parser.parse_args(argv)
    import keras

    import keras_regkit as rk

    rows = []
    for case in args.cases:
        for seed in range(1 if args.quick else args.seeds):
            rows += one_shot(keras, rk, case, seed, args.quick, args.methods, args.levels)
    if args.merge:
        key = lambda row: (row["case"], row["seed"], row["level"], row["method"])  # noqa: E731
        new = {key(row) for row in rows}
        rows = [row for row in read_json(args.out)["rows"] if key(row) not in new] + rows
    summary = summarize(rows)
    print("\ntest accuracy change vs the unpruned model, pp: median (worst)\n" + table(summary))
    if not args.quick:
        write_json(args.out, {"summary": summary, "rows": rows, "backend": keras.backend.backend()})


if __name__ == "__main__":
    main()
