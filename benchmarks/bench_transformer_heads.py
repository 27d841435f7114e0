"""Shrinking a BERT classifier's attention heads and feed-forward units,
together and apart, then `compact`: how much smaller and faster on CPU, and at
what accuracy, on a task the baseline does not solve perfectly.

The task (synthetic, no downloads): sequences of `--seq-len` tokens from a
vocabulary of `VOCAB`, a [CLS] token first; the label says whether tokens of
set A (ids 5-24) outnumber those of set B (ids 25-44), ties left out (the
counts differ by 1 in many samples). A share `--label-noise` (10 %) of the
labels is flipped, in every split: no model scores above about 90 % on the
test labels, so a model that forgets part of the rule loses accuracy
visibly (a cut costs about 0.8 of what it would cost on clean labels). The
classifier reads the [CLS] position (`pooled_output`), so it must gather the
counts through attention.

The model: a KerasHub `BertBackbone` (`--layers` 4, `--hidden` 256, `--heads`
8, intermediate `--intermediate` 1024, no dropout) and a Dense head, trained
from scratch with Adam. For each seed, copies of the trained model are
shrunk for `--epochs` epochs (`keras_regkit.shrink(sparsity=s)`, one global
cut over the layers, curvature scores) in three settings, each at two
levels, then `keras_regkit.compact`-ed:

- `ffn`: `granularity="unit", layers="*feedforward_intermediate_dense"`:
  intermediate units only;
- `heads`: `granularity="head"`: whole attention heads only (every layer
  keeps at least one);
- `both`: `granularity="unit"` over the intermediate Dense layers and the
  attention layers: units and heads in one ranking (the level is the share
  of units and heads together).

The shrink trains for `--epochs` more epochs at its own learning rate (3x),
which by itself moves a model trained from scratch for a few epochs: each
seed also runs the same `shrink` with `sparsity=0` (`dense`: same epochs and
rate, nothing cut), and accuracy changes are against it (`acc_delta_pp`;
against the original model too, `acc_delta_vs_original_pp`).

Reported per seed and as median / worst over seeds: parameters, `.keras`
file size (an uncompiled copy), CPU throughput at batch `--batch` of the
compacted model over the original, traced (`tf.function`) and XLA-compiled,
timed interleaved in one process (median of the per-round ratios, and the
ratio of the best rounds: contention only ever slows a round), and the
test-accuracy change in points. Each compacted model is checked against the
shrunk one it came from (outputs to float precision).

Usage (repository root, project venv):

    python benchmarks/bench_transformer_heads.py --seeds 3 --json benchmarks/results/transformer_heads_results.json
    python benchmarks/bench_transformer_heads.py --quick   # smoke run
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
from common.reporting import group, read_json, spread, write_json

from keras_regkit.demo import deployable_copy

VOCAB, CLS = 200, 1
SET_A, SET_B = range(5, 25), range(25, 45)
SEED = 0
TARGET = (2.0, -1.0)  # traced throughput ratio at least, accuracy change (pp) at least


def make_data(n, rng, seq_len, label_noise=0.0):
    """`n` sequences and labels (A outnumbers B), ties drawn again; a share
    `label_noise` of the labels flipped."""
    tokens = np.empty((0, seq_len), "int32")
    while len(tokens) < n:
        t = rng.integers(5, VOCAB, size=(2 * n, seq_len), dtype="int32")
        t[:, 0] = CLS
        a, b = np.isin(t, SET_A).sum(1), np.isin(t, SET_B).sum(1)
        tokens = np.concatenate([tokens, t[a != b]])
    tokens = tokens[:n]
    labels = (np.isin(tokens, SET_A).sum(1) > np.isin(tokens, SET_B).sum(1)).astype("int32")
    flip = rng.random(n) < label_noise
    labels[flip] = 1 - labels[flip]
    inputs = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": np.ones_like(tokens)}
    return inputs, labels


def build(keras, keras_hub, args):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=args.layers, num_heads=args.heads, hidden_dim=args.hidden,
        intermediate_dim=args.intermediate, max_sequence_length=args.seq_len, dropout=0.0)
    outputs = keras.layers.Dense(2, name="head")(backbone.output["pooled_output"])
    return keras.Model(backbone.input, outputs, name="bert_classifier")


def settings(keras):
    attention_or_ffn = lambda layer: (  # noqa: E731
        isinstance(layer, keras.layers.MultiHeadAttention) or layer.name == "feedforward_intermediate_dense")
    return {
        "ffn": dict(granularity="unit", layers="*feedforward_intermediate_dense"),
        "heads": dict(granularity="head"),
        "both": dict(granularity="unit", layers=attention_or_ffn),
    }


def logits(model, x):
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def throughputs(tf, models, x, repeats, calls, jit_compile):
    """Samples/s of each model's traced (`jit_compile`: XLA-compiled)
    forward pass on batch `x`, one value per interleaved round."""
    batch = len(x["token_ids"])
    x = {k: tf.constant(v) for k, v in x.items()}
    functions = [tf.function(lambda v, m=m: m(v, training=False), autograph=False, jit_compile=jit_compile)
                 for m in models]
    rounds = interleaved_seconds([lambda f=f: f(x)[0].numpy() for f in functions], repeats, calls, warmup=2)
    return [[batch / seconds for seconds in r] for r in rounds]


def heads_left(keras, model):
    """Attention heads in `model`, over all layers."""
    return sum(layer.num_heads for layer in model._flatten_layers(include_self=False, recursive=True)
               if isinstance(layer, keras.layers.MultiHeadAttention))


def units_left(keras, model):
    """Feed-forward intermediate units in `model`, over all layers."""
    return sum(layer.units for layer in model._flatten_layers(include_self=False, recursive=True)
               if isinstance(layer, keras.layers.Dense) and layer.name.endswith("feedforward_intermediate_dense"))


def run_seed(args, keras, keras_hub, tf, rk, seed):
    rng = np.random.default_rng(seed)
    x, y = make_data(args.train, rng, args.seq_len, args.label_noise)
    x_val, y_val = make_data(args.val, rng, args.seq_len, args.label_noise)
    x_test, y_test = make_data(args.test, rng, args.seq_len, args.label_noise)
    keras.utils.set_random_seed(seed)
    base = build(keras, keras_hub, args)
    compile_model(keras, base, args.lr)
    t0 = time.perf_counter()
    base.fit(x, y, validation_data=(x_val, y_val), epochs=args.train_epochs, batch_size=args.batch_size,
             verbose=0)
    base_acc = float((logits(base, x_test).argmax(1) == y_test).mean())
    print(f"\n[seed {seed}] baseline: {base.count_params():,} params, test acc {base_acc:.4f} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    if not args.levels:
        return {"seed": seed, "original": {"test_acc": base_acc, "params": int(base.count_params())}, "runs": []}

    # The control: the shrink's training, nothing cut.
    control = deployable_copy(base)
    compile_model(keras, control, args.lr)
    t0 = time.perf_counter()
    rk.shrink(control, x, y, sparsity=0.0, epochs=args.epochs, batch_size=args.batch_size,
              validation_data=(x_val, y_val))
    control_acc = float((logits(control, x_test).argmax(1) == y_test).mean())
    print(f"  dense (same training, nothing cut): test acc {control_acc:.4f} ({time.perf_counter() - t0:.0f}s)",
          flush=True)

    runs, compacted = [], []
    for name, kwargs in settings(keras).items():
        if name not in args.settings:
            continue
        for sparsity in args.levels[name]:
            model = deployable_copy(base)
            compile_model(keras, model, args.lr)
            t0 = time.perf_counter()
            result = rk.shrink(model, x, y, sparsity=sparsity, epochs=args.epochs, batch_size=args.batch_size,
                               validation_data=(x_val, y_val), **kwargs)
            shrunk_logits = logits(model, x_test)
            small = rk.compact(model)
            small_logits = logits(small.model, x_test)
            shrunk_acc = float((shrunk_logits.argmax(1) == y_test).mean())
            small_acc = float((small_logits.argmax(1) == y_test).mean())
            run = {
                "setting": name, "sparsity": sparsity, "outcome": str(result.outcome),
                "heads_left": heads_left(keras, small.model), "units_left": units_left(keras, small.model),
                "params": int(small.model.count_params()),
                "test_acc_shrunk": shrunk_acc, "test_acc_compacted": small_acc,
                "acc_delta_pp": 100 * (small_acc - control_acc),
                "acc_delta_vs_original_pp": 100 * (small_acc - base_acc),
                "max_logit_diff_compacted_vs_shrunk": float(np.abs(small_logits - shrunk_logits).max()),
            }
            print(f"  {name} {sparsity}: shrink {time.perf_counter() - t0:.0f}s, heads left {run['heads_left']}"
                  f"/{args.layers * args.heads}, units left {run['units_left']}/{args.layers * args.intermediate}; "
                  f"test acc {small_acc:.4f} ({run['acc_delta_pp']:+.2f} pp vs dense), compacted vs shrunk logits <= "
                  f"{run['max_logit_diff_compacted_vs_shrunk']:.1g}", flush=True)
            runs.append(run)
            compacted.append(small.model)

    with tempfile.TemporaryDirectory() as folder:
        base_bytes = saved_size(base, folder, "base")
        for i, (r, m) in enumerate(zip(runs, compacted)):
            r["file_bytes"] = saved_size(m, folder, f"m{i}")
            r["file_ratio"] = base_bytes / r["file_bytes"]
            r["param_ratio"] = base.count_params() / r["params"]
    batch = {k: v[:args.batch] for k, v in x_test.items()}
    original = {"test_acc": base_acc, "dense_test_acc": control_acc, "params": int(base.count_params()),
                "file_bytes": base_bytes}
    for mode, jit in (("traced", False), ("xla", True)):
        t0 = time.perf_counter()
        rounds = throughputs(tf, [base] + compacted, batch, args.repeats, args.calls, jit)
        original[f"throughput_per_s_{mode}"] = statistics.median(rounds[0])
        for r, tps in zip(runs, rounds[1:]):
            ratios = sorted(t / b for t, b in zip(tps, rounds[0]))
            r[f"throughput_ratio_{mode}"] = statistics.median(ratios)
            r[f"throughput_ratio_range_{mode}"] = [ratios[0], ratios[-1]]
            r[f"throughput_ratio_best_{mode}"] = max(tps) / max(rounds[0])
        print(f"  timed {mode} in {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"  {'model':<12} {'test acc':>8} {'params':>10} {'file KB':>8} {'traced x':>9} {'best':>6} "
          f"{'XLA x':>7} {'best':>6}")
    print(f"  {'dense':<12} {control_acc:>8.4f}")
    print(f"  {'original':<12} {base_acc:>8.4f} {base.count_params():>10,} {base_bytes / 1024:>8.0f} "
          f"{original['throughput_per_s_traced']:>8,.0f}/s {'':>6} {original['throughput_per_s_xla']:>6,.0f}/s")
    for r in runs:
        print(f"  {r['setting'] + ' ' + str(r['sparsity']):<12} {r['test_acc_compacted']:>8.4f} {r['params']:>10,} "
              f"{r['file_bytes'] / 1024:>8.0f} {r['throughput_ratio_traced']:>8.2f}x "
              f"{r['throughput_ratio_best_traced']:>5.2f}x {r['throughput_ratio_xla']:>6.2f}x "
              f"{r['throughput_ratio_best_xla']:>5.2f}x", flush=True)
    return {"seed": seed, "original": original, "runs": runs}


_COLUMNS = ("param_ratio", "file_ratio", "throughput_ratio_traced", "throughput_ratio_best_traced",
            "throughput_ratio_xla", "throughput_ratio_best_xla", "acc_delta_pp", "acc_delta_vs_original_pp",
            "heads_left", "units_left")


def summarize(results):
    """Median and worst over seeds, per setting and level."""
    summary = {}
    print(f"\nover {len(results)} seeds: median (worst)")
    every_run = [r for res in results for r in res["runs"]]
    for (setting, sparsity), runs in group(every_run, lambda r: (r["setting"], r["sparsity"])).items():
        row = {key: spread((r[key] for r in runs), max if key in ("heads_left", "units_left") else min)
               for key in _COLUMNS}
        row["target_met_median"] = (row["throughput_ratio_traced"]["median"] >= TARGET[0]
                                    and row["acc_delta_pp"]["median"] >= TARGET[1])
        row["target_met_every_seed"] = all(r["throughput_ratio_traced"] >= TARGET[0] and r["acc_delta_pp"] >= TARGET[1]
                                           for r in runs)
        summary[f"{setting} {sparsity}"] = row
        f = {k: f"{v['median']:.2f} ({v['worst']:.2f})" for k, v in row.items() if isinstance(v, dict)}
        print(f"  {setting + ' ' + str(sparsity):<11} heads left {f['heads_left']}, units left {f['units_left']}; "
              f"params {f['param_ratio']}x, file {f['file_ratio']}x, traced {f['throughput_ratio_traced']}x "
              f"(best rounds {f['throughput_ratio_best_traced']}x), XLA {f['throughput_ratio_xla']}x "
              f"(best rounds {f['throughput_ratio_best_xla']}x), acc {f['acc_delta_pp']} pp vs dense "
              f"({f['acc_delta_vs_original_pp']} vs original); target met: median "
              f"{row['target_met_median']}, every seed {row['target_met_every_seed']}")
    return summary


def markdown(path):
    """The README's table from a results file: median (worst) over seeds."""
    saved = read_json(path)
    n_heads = saved["settings"]["layers"] * saved["settings"]["heads"]
    n_units = saved["settings"]["layers"] * saved["settings"]["intermediate"]
    lines = ["| setting | level | heads left | FFN units left | params | .keras file | throughput, traced "
             "| throughput, XLA | test accuracy change |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, row in saved["summary"].items():
        setting, level = key.split()
        m = {k: v["median"] for k, v in row.items() if isinstance(v, dict)}
        w = {k: v["worst"] for k, v in row.items() if isinstance(v, dict)}
        lines.append(
            f"| {setting} | {float(level):.0%} | {m['heads_left']:.0f}/{n_heads} | {m['units_left']:.0f}/{n_units} "
            f"| {m['param_ratio']:.2f}x | {m['file_ratio']:.2f}x "
            f"| {m['throughput_ratio_traced']:.2f}x ({w['throughput_ratio_traced']:.2f}) "
            f"| {m['throughput_ratio_xla']:.2f}x ({w['throughput_ratio_xla']:.2f}) "
            f"| {m['acc_delta_pp']:+.2f} ({w['acc_delta_pp']:+.2f}) pp |")
    return "\n".join(lines)


def add_task_arguments(parser) -> None:
    """The model and task settings the transformer benchmarks share
    (`bench_deploy_transformer.py`, `bench_transformer_blocks.py`)."""
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--label-noise", type=float, default=0.1, help="share of training labels flipped")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-epochs", type=int, default=6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["ffn", "heads", "both"])
    parser.add_argument("--ffn-levels", type=float, nargs="*", default=[0.75, 0.9])
    parser.add_argument("--head-levels", type=float, nargs="*", default=[0.5, 0.75])
    parser.add_argument("--both-levels", type=float, nargs="*", default=[0.75, 0.9])
    add_task_arguments(parser)
    parser.add_argument("--epochs", type=int, default=2, help="shrink epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch")
    parser.add_argument("--batch", type=int, default=256, help="throughput batch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2, help="calls per timed round")
    parser.add_argument("--baseline-only", action="store_true", help="train and test the baselines only")
    parser.add_argument("--quick", action="store_true", help="tiny model and data, few epochs and repeats")
    parser.add_argument("--json", help="write the figures as JSON here")
    parser.add_argument("--table", metavar="JSON", help="print the README's table from a results file, and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(args.table))
        return None
    if args.quick:
        args.layers, args.hidden, args.heads, args.intermediate = 2, 32, 4, 64
        args.train, args.val, args.test, args.train_epochs, args.epochs, args.repeats = 400, 100, 200, 1, 1, 2
    args.levels = {} if args.baseline_only else {
        "ffn": args.ffn_levels, "heads": args.head_levels, "both": args.both_levels}

    import keras
    import keras_hub
    import tensorflow as tf

    import keras_regkit as rk

    print(f"keras {keras.__version__}, keras-hub {keras_hub.__version__}, tensorflow {tf.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    results = [run_seed(args, keras, keras_hub, tf, rk, SEED + i) for i in range(args.seeds)]
    summary = summarize(results) if args.levels else {}
    print(f"total {time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f}")
    if args.json:
        write_json(args.json, {"settings": {k: v for k, v in vars(args).items()},
                               "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                                            "keras_hub": keras_hub.__version__},
                               "cpus": os.cpu_count(), "summary": summary, "seeds": results})
    return results


if __name__ == "__main__":
    main()
