"""The tolerance mode next to the frontier on more model kinds: the MNIST-1D
CNN of `bench_compact.py` (`common/models.py`, narrower: `--cnn-filters`), a GRU text
classifier, and a regression MLP watched by `monitor="val_mae"`.

Per model kind and seed: a baseline trained from scratch, then from a copy
of its weights and optimizer state (as a user's `shrink` after `fit` has),
a 10-epoch shrink:

- sparsity mode at 80, 90, 95, 97, 98, 99 and 99.5 %: the *frontier* at a
  tolerance `t` is the highest level whose median test change is >= -t and
  worst >= -(t + 0.5) points (classifiers), or whose test MAE grows by at
  most `t` on the median seed and `t + 0.05` on the worst (regression,
  relative to the seed's own baseline);
- tolerance mode at `t` (top-1 for classifiers; `monitor="val_mae"` for the
  regression model, a relative tolerance).

Data (no network): MNIST-1D (the `mnist1d` package), a synthetic token task
(sequences of 40 tokens from 64; the label says which of four token sets
is the most frequent, ties drawn again), and scikit-learn's diabetes
regression set (442 samples; standardised target).

Usage (repository root, project venv with mnist1d):

    python benchmarks/bench_tolerance_models.py --seeds 5 --out benchmarks/results/tolerance_models_results.json
    python benchmarks/bench_tolerance_models.py --quick
    # the GRU row after learning_rate="auto" kept recurrent models' rate (docs/benchmarks.md):
    python benchmarks/bench_tolerance_models.py --kinds text --seeds 3 --levels 0.8 0.9 0.95 0.97 \
        --tolerances 0.01 --out benchmarks/results/tolerance_models_gru_rate.json
    # the tolerance rows again, the sparsity rows (the frontier) kept:
    python benchmarks/bench_tolerance_models.py --seeds 5 --levels \
        --sparsity-rows-from benchmarks/results/tolerance_models_results.json --out new.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from common.models import build_cnn, compile_model
from common.protocol import BATCH_SIZE, LOADERS, SHRINK_EPOCHS, plain_fit_seconds, resetter
from common.reporting import group, read_json, spread, write_json

LEVELS = [0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995]
TOLERANCES = {"cnn": [0.01, 0.02], "text": [0.01, 0.02], "regression": [0.05, 0.1]}
BASELINE_EPOCHS = {"cnn": 30, "text": 30, "regression": 200}


def text_data(n, rng, length=40, vocab=64, sets=4):
    """Which of `sets` token groups (ids 4-63 split evenly) is the most
    frequent; sequences with a tie for the top are drawn again."""
    size = (vocab - 4) // sets
    out_x, out_y = [], []
    while len(out_x) < n:
        tokens = rng.integers(0, vocab, size=(2 * n, length))
        counts = np.stack([((tokens >= 4 + i * size) & (tokens < 4 + (i + 1) * size)).sum(1) for i in range(sets)], 1)
        top = np.sort(counts, 1)
        keep = top[:, -1] > top[:, -2]
        out_x += list(tokens[keep])
        out_y += list(np.argmax(counts[keep], 1))
    return np.asarray(out_x[:n], "int32"), np.asarray(out_y[:n], "int32")


def load(kind):
    """(train, validation, test) splits."""
    if kind == "cnn":
        return LOADERS["mnist1d"]()
    rng = np.random.default_rng(0)
    if kind == "text":
        return text_data(3000, rng), text_data(500, rng), text_data(1000, rng)
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
    y = ((d.target - d.target.mean()) / d.target.std()).astype("float32")[:, None]
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return (x[:282], y[:282]), (x[282:352], y[282:352]), (x[352:], y[352:])


def build(keras, kind, shape, filters):
    if kind == "cnn":
        return build_cnn(keras, shape, filters)
    if kind == "text":
        return keras.Sequential([keras.Input(shape, dtype="int32"), keras.layers.Embedding(64, 32),
                                 keras.layers.GRU(64), keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(4)])
    return keras.Sequential([keras.Input(shape), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])


def score(keras, model, kind, x, y):
    """Test accuracy (classifiers) or MAE (regression)."""
    out = keras.ops.convert_to_numpy(model.predict(x, verbose=0, batch_size=512))
    if kind == "regression":
        return float(np.mean(np.abs(out - y)))
    return float(np.mean(np.argmax(out, -1) == y))


def change(kind, value, base):
    """Points of accuracy gained, or the MAE's relative growth."""
    return (value - base) / base if kind == "regression" else 100 * (value - base)


def run(kind, seed, args, keras, rk):
    (x, y), (xv, yv), (xt, yt) = load(kind)
    keras.utils.set_random_seed(seed)
    model = build(keras, kind, x.shape[1:], args.cnn_filters)
    compile_model(keras, model, regression=kind == "regression")
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3 if args.quick else BASELINE_EPOCHS[kind],
              validation_data=(xv, yv), verbose=0)
    base = score(keras, model, kind, xt, yt)
    reset = resetter(keras, model)
    epochs = 2 if args.quick else SHRINK_EPOCHS
    fit_seconds = plain_fit_seconds(model, reset, x, y, (xv, yv), epochs)
    runs = [("sparsity", level, dict(sparsity=level)) for level in args.levels]
    runs += [("tolerance", t, dict(tolerance=t, **({"monitor": "val_mae"} if kind == "regression" else {})))
             for t in (TOLERANCES[kind] if args.tolerances is None else args.tolerances)]
    rows = []
    for mode, value, kwargs in runs:
        reset()
        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        if args.distill is not None:
            kwargs = {**kwargs, "distill": args.distill}
        result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=epochs, batch_size=BATCH_SIZE, **kwargs)
        seconds = time.perf_counter() - start
        row = {"kind": kind, "seed": seed, "mode": mode, "value": value, "zeros": result.layers and
               sum(s.zeros for s in result.layers) / sum(s.params for s in result.layers),
               "change": change(kind, score(keras, model, kind, xt, yt), base), "baseline": base,
               "outcome": result.outcome, "wall_ratio": seconds / fit_seconds, "distill": args.distill,
               "checks": [[float(level), float(v), bool(held)] for level, v, held in result.levels]}
        rows.append(row)
        print(f"{kind} seed {seed} {mode} {value}: zeros {row['zeros']:.4f}, change {row['change']:+.3f}, "
              f"{result.outcome}, {row['wall_ratio']:.2f}x fit", flush=True)
    return rows


def summarize(rows):
    """(kind, mode, value) -> median and worst change (the MAE's growth is
    worst at its highest), median and lowest zeros, median wall ratio."""
    out = {}
    for key, runs in group(rows, lambda r: (r["kind"], r["mode"], r["value"])).items():
        out[key] = {**spread((r["change"] for r in runs), max if key[0] == "regression" else min),
                    "zeros": statistics.median(r["zeros"] for r in runs), "min_zeros": min(r["zeros"] for r in runs),
                    "wall_ratio": statistics.median(r["wall_ratio"] for r in runs)}
    return out


def frontier(summary, kind, t):
    def keeps(s):
        if kind == "regression":
            return s["median"] <= t + 1e-9 and s["worst"] <= t + 0.05 + 1e-9
        return s["median"] >= -100 * t - 1e-9 and s["worst"] >= -100 * t - 0.5 - 1e-9

    return max((level for (k, mode, level), s in summary.items() if k == kind and mode == "sparsity" and keeps(s)),
               default=None)


def table(rows):
    summary = summarize(rows)
    unit = {"regression": "relative test MAE growth"}
    lines = ["| model | t | frontier | tolerance mode: zeros (lowest seed) | change median / worst | wall |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind in TOLERANCES:
        for t in TOLERANCES[kind]:
            s = summary.get((kind, "tolerance", t))
            if s is None:
                continue
            level = frontier(summary, kind, t)
            edge = "-" if level is None else f"{level:.1%} ({summary[(kind, 'sparsity', level)]['median']:+.2f} / " \
                                             f"{summary[(kind, 'sparsity', level)]['worst']:+.2f})"
            lines.append(f"| {kind} | {t} | {edge} | {100 * s['zeros']:.1f} % ({100 * s['min_zeros']:.1f}) | "
                         f"{s['median']:+.2f} / {s['worst']:+.2f} | {s['wall_ratio']:.2f}x |")
    lines.append("Change: test accuracy points (classifiers), " + unit["regression"] + " (regression, a fraction).")
    sparsity = [s["wall_ratio"] for (k, mode, _), s in summary.items() if mode == "sparsity"]
    if sparsity:
        lines.append(f"Sparsity mode wall time / 10 plain epochs: median {statistics.median(sparsity):.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed + seeds - 1 (the climb's constants were chosen on 5-9)")
    p.add_argument("--kinds", nargs="+", default=list(TOLERANCES), choices=list(TOLERANCES))
    p.add_argument("--cnn-filters", type=int, default=32)
    p.add_argument("--levels", nargs="*", type=float, default=LEVELS, help="the sparsity mode's levels (none: "
                   "tolerance rows only, with --sparsity-rows-from)")
    p.add_argument("--sparsity-rows-from", default=None,
                   help="a results JSON of the same seeds whose sparsity-mode rows to keep (the baselines are "
                        "deterministic: op determinism is on)")
    p.add_argument("--tolerances", nargs="*", type=float, default=None,
                   help="the tolerance rows (default: each kind's own; none: sparsity rows only)")
    p.add_argument("--distill", type=lambda v: {"on": True, "off": False}.get(v) if v in ("on", "off") else float(v),
                   default=None, help="shrink(distill=...): on, off or a weight (default: the package's default)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--table", default=None, help="print the table of a results JSON")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.table:
        print(table(read_json(args.table)["results"]))
        return 0
    import keras
    import tensorflow as tf

    import keras_regkit as rk

    tf.config.experimental.enable_op_determinism()
    rows = []

    def save():
        if args.out:
            write_json(args.out, {"benchmark": "tolerance mode on more model kinds", "seeds": args.seeds,
                                  "quick": args.quick, "cnn_filters": args.cnn_filters,
                                  "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
                                  "results": rows})

    for kind in args.kinds:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows += run(kind, seed, args, keras, rk)
            save()  # after each seed: a run cut short keeps the seeds it finished
    if args.sparsity_rows_from:
        kept = [r for r in read_json(args.sparsity_rows_from)["results"]
                if r["mode"] == "sparsity" and r["kind"] in args.kinds]
        rows = kept + [r for r in rows if r["mode"] != "sparsity"]
    print(table(rows))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
