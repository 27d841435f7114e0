"""Does a structured shrink + `compact` of a BERT classifier's feed-forward
blocks make it smaller and faster on CPU, and at what accuracy?

The task (synthetic, no downloads): sequences of `SEQ_LEN` tokens from a
vocabulary of `VOCAB`, a [CLS] token first; the label says whether tokens of
set A (ids 5-24) outnumber those of set B (ids 25-44). Samples whose counts
differ by less than `--margin` are drawn again: with the default 2 the
baseline is near perfect, `--margin 1` (ties only left out) is harder. The
classifier reads the [CLS] position (`pooled_output`), so it must gather the
counts through attention.

The model: a KerasHub `BertBackbone` (`--layers` 2, `--hidden` 64, 2 heads,
intermediate 4 x hidden, no dropout) and a Dense head, trained from scratch
with Adam. For each seed and each `--sparsities` value, a copy of the
trained model is shrunk with `keras_regkit.shrink(granularity="unit",
layers="*feedforward_intermediate_dense")` for `--epochs` epochs (whole
intermediate units die along the ramp, one global cut over the layers) and
then `keras_regkit.compact`-ed, which rebuilds each `TransformerEncoder` with
the smaller `intermediate_dim`.

Reported per seed and as median / worst over seeds: parameters, `.keras`
file size (an uncompiled copy: no optimizer slots), CPU throughput at batch
`--batch` of the compacted model over the original (a traced `model(x)`
call, XLA-compiled with `--jit-compile` as Keras' `predict` is by default
under TensorFlow; all models timed interleaved in one process after a warm-up; median
of `--repeats` rounds, with the min-max range of the per-round ratios; and,
as contention only ever slows a round, the ratio of the best rounds), and
the test-accuracy change in points. The shrunk model before compaction is
checked against the compacted one: their test accuracies and outputs must
agree to float precision (compact is exact).

Usage (repository root, project venv):

    python benchmarks/bench_transformer_shrink.py --seeds 3 --json benchmarks/results/transformer_shrink_results.json
    python benchmarks/bench_transformer_shrink.py --quick   # smoke run
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
from common.models import compile_model
from common.reporting import spread, write_json

from keras_regkit.demo import deployable_copy

VOCAB, SEQ_LEN, CLS = 200, 32, 1
SET_A, SET_B = range(5, 25), range(25, 45)
SPLITS = {"train": 2000, "val": 500, "test": 2000}  # small: 3 seeds in ~30 min on 2 shared cores
SEED = 0


def make_data(n, rng, margin=2):
    """`n` sequences and labels (A outnumbers B); counts closer than `margin` are drawn again."""
    tokens = np.empty((0, SEQ_LEN), "int32")
    while len(tokens) < n:
        t = rng.integers(5, VOCAB, size=(2 * n, SEQ_LEN), dtype="int32")
        t[:, 0] = CLS
        a, b = np.isin(t, SET_A).sum(1), np.isin(t, SET_B).sum(1)
        tokens = np.concatenate([tokens, t[np.abs(a - b) >= margin]])
    tokens = tokens[:n]
    labels = (np.isin(tokens, SET_A).sum(1) > np.isin(tokens, SET_B).sum(1)).astype("int32")
    inputs = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": np.ones_like(tokens)}
    return inputs, labels


def build(keras, keras_hub, layers, hidden):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=layers, num_heads=max(2, hidden // 32), hidden_dim=hidden,
        intermediate_dim=4 * hidden, max_sequence_length=SEQ_LEN, dropout=0.0)
    outputs = keras.layers.Dense(2, name="head")(backbone.output["pooled_output"])
    return keras.Model(backbone.input, outputs, name="bert_classifier")


def logits(model, x):
    return np.asarray(model.predict(x, batch_size=500, verbose=0))


def throughputs(tf, models, x, repeats, calls, jit_compile=False):
    """Samples/s of each model's traced (`jit_compile`: XLA-compiled)
    forward pass on batch `x`, one value per interleaved round."""
    batch = len(x["token_ids"])
    x = {k: tf.constant(v) for k, v in x.items()}
    functions = [tf.function(lambda v, m=m: m(v, training=False), autograph=False, jit_compile=jit_compile)
                 for m in models]
    rounds = interleaved_seconds([lambda f=f: f(x)[0].numpy() for f in functions], repeats, calls, warmup=3)
    return [[batch / seconds for seconds in r] for r in rounds]


def run_seed(args, keras, keras_hub, tf, rk, seed):
    rng = np.random.default_rng(seed)
    (x, y), (x_val, y_val), (x_test, y_test) = (make_data(SPLITS[k] // (4 if args.quick else 1), rng, args.margin) for k in SPLITS)
    keras.utils.set_random_seed(seed)
    base = build(keras, keras_hub, args.layers, args.hidden)
    compile_model(keras, base)
    t0 = time.perf_counter()
    base.fit(x, y, validation_data=(x_val, y_val), epochs=args.train_epochs, batch_size=args.batch_size, verbose=0)
    base_acc = float((logits(base, x_test).argmax(1) == y_test).mean())
    print(f"\n[seed {seed}] baseline: {base.count_params():,} params, test acc {base_acc:.4f} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)

    runs, compacted = [], []
    for sparsity in args.sparsities:
        model = deployable_copy(base)
        compile_model(keras, model)
        t0 = time.perf_counter()
        result = rk.shrink(model, x, y, sparsity=sparsity, granularity="unit",
                           layers="*feedforward_intermediate_dense", epochs=args.epochs,
                           batch_size=args.batch_size, validation_data=(x_val, y_val))
        shrunk_logits = logits(model, x_test)
        try:
            small = rk.compact(model)
        except Exception as error:  # report it, keep the other figures
            import traceback
            traceback.print_exc()
            runs.append({"sparsity": sparsity, "error": f"{type(error).__name__}: {error}"})
            continue
        small_logits = logits(small.model, x_test)
        shrunk_acc = float((shrunk_logits.argmax(1) == y_test).mean())
        small_acc = float((small_logits.argmax(1) == y_test).mean())
        units = {k.split("/")[0]: v[1] for k, v in small.units.items() if k.endswith("intermediate_dense")}
        print(f"  sparsity {sparsity}: shrink {time.perf_counter() - t0:.0f}s, {result.outcome}, "
              f"intermediate units left {units}; test acc shrunk {shrunk_acc:.4f}, compacted {small_acc:.4f}",
              flush=True)
        runs.append({
            "sparsity": sparsity, "outcome": str(result.outcome), "units_left": units,
            "params": int(small.model.count_params()),
            "test_acc_shrunk": shrunk_acc, "test_acc_compacted": small_acc,
            "acc_delta_pp": 100 * (small_acc - base_acc),
            "acc_shrunk_minus_compacted": shrunk_acc - small_acc,
            "max_logit_diff_compacted_vs_shrunk": float(np.abs(small_logits - shrunk_logits).max()),
        })
        compacted.append(small.model)

    ok = [r for r in runs if "error" not in r]
    with tempfile.TemporaryDirectory() as folder:
        base_bytes = saved_size(base, folder, "base")
        for r, m in zip(ok, compacted):
            r["file_bytes"] = saved_size(m, folder, f"s{r['sparsity']}")
    batch = {k: v[:args.batch] for k, v in x_test.items()}
    rounds = throughputs(tf, [base] + compacted, batch, args.repeats, args.calls, args.jit_compile)
    base_tp = statistics.median(rounds[0])
    for r, tps in zip(ok, rounds[1:]):
        ratios = sorted(t / b for t, b in zip(tps, rounds[0]))
        r.update(throughput_per_s=statistics.median(tps), throughput_ratio=statistics.median(ratios),
                 throughput_ratio_range=[ratios[0], ratios[-1]],
                 throughput_ratio_best=max(tps) / max(rounds[0]),
                 param_ratio=base.count_params() / r["params"], file_ratio=base_bytes / r["file_bytes"])
    print(f"  {'model':<14} {'test acc':>8} {'params':>9} {'file KB':>8} {'samples/s':>10} {'speedup [range]':>18}")
    print(f"  {'original':<14} {base_acc:>8.4f} {base.count_params():>9,} {base_bytes / 1024:>8.0f} {base_tp:>10,.0f}")
    for r in ok:
        lo, hi = r["throughput_ratio_range"]
        print(f"  {'sparsity ' + str(r['sparsity']):<14} {r['test_acc_compacted']:>8.4f} {r['params']:>9,} "
              f"{r['file_bytes'] / 1024:>8.0f} {r['throughput_per_s']:>10,.0f} "
              f"{r['throughput_ratio']:>6.2f}x [{lo:.2f}, {hi:.2f}] best {r['throughput_ratio_best']:.2f}x  "
              f"(shrunk - compacted acc {r['acc_shrunk_minus_compacted']:.1g}, "
              f"logits <= {r['max_logit_diff_compacted_vs_shrunk']:.1g})", flush=True)
    return {"seed": seed, "original": {"test_acc": base_acc, "params": int(base.count_params()),
                                       "file_bytes": base_bytes, "throughput_per_s": base_tp}, "runs": runs}


def summarize(results, sparsities):
    """Median and worst over seeds, per sparsity."""
    summary = {}
    print(f"\nover {len(results)} seeds: median (worst)")
    print(f"  {'sparsity':<9} {'params x':>12} {'file x':>12} {'throughput x':>12} {'best-round x':>12} "
          f"{'acc pp':>14}")
    for s in sparsities:
        runs = [r for res in results for r in res["runs"] if r["sparsity"] == s and "error" not in r]
        if not runs:
            continue
        row = {key: spread(r[key] for r in runs)
               for key in ("param_ratio", "file_ratio", "throughput_ratio", "throughput_ratio_best", "acc_delta_pp")}
        row["target_met_median"] = row["throughput_ratio"]["median"] >= 1.5 and row["acc_delta_pp"]["median"] >= -1
        row["target_met_all_seeds"] = all(r["throughput_ratio"] >= 1.5 and r["acc_delta_pp"] >= -1 for r in runs)
        summary[str(s)] = row
        f = {k: f"{v['median']:.2f} ({v['worst']:.2f})" for k, v in row.items() if isinstance(v, dict)}
        print(f"  {s:<9} {f['param_ratio']:>12} {f['file_ratio']:>12} {f['throughput_ratio']:>12} "
              f"{f['throughput_ratio_best']:>12} {f['acc_delta_pp']:>14}  target (>=1.5x, <=1 pt) met: median {row['target_met_median']}, "
              f"every seed {row['target_met_all_seeds']}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.75, 0.9])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--margin", type=int, default=2, help="|count A - count B| of every sample, at least")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3, help="shrink epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch")
    parser.add_argument("--batch", type=int, default=256, help="throughput batch")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--calls", type=int, default=3, help="calls per timed round")
    parser.add_argument("--jit-compile", action="store_true",
                        help="time the XLA-compiled forward pass (what Keras' predict uses by default "
                             "under TensorFlow) instead of the plain traced one")
    parser.add_argument("--quick", action="store_true", help="tiny model and data, few epochs and repeats")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.train_epochs, args.epochs, args.repeats, args.calls = 32, 2, 2, 3, 2

    import keras
    import keras_hub
    import tensorflow as tf

    import keras_regkit as rk

    print(f"keras {keras.__version__}, keras-hub {keras_hub.__version__}, tensorflow {tf.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    results = [run_seed(args, keras, keras_hub, tf, rk, SEED + i) for i in range(args.seeds)]
    summary = summarize(results, args.sparsities)
    print(f"total {time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f}")
    if args.json:
        write_json(args.json, {"settings": vars(args),
                               "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                                            "keras_hub": keras_hub.__version__},
                               "cpus": os.cpu_count(), "summary": summary, "seeds": results})
    return results


if __name__ == "__main__":
    main()
