"""Whole transformer blocks on the heads benchmark's BERT: how well the block
score predicts which removal costs least, and accuracy against blocks kept.

The model and task are `bench_transformer_heads.py`'s (a 4-layer KerasHub
`BertBackbone`, hidden 256, 8 heads, intermediate 1024, a synthetic counting
task with 10 % label noise), trained the same way, per seed.

`--part agreement` (accuracy only, no timing): each block's score
(`keras_regkit.pruning.blocks.output_scores`: how far the model's outputs
move when the block alone is removed, on 256 validation samples; what
`Blocks(calibration_data=...)` ranks by), the local `block_scores` (how far
the block moves its own output), and a weight-only score (the mean square of the block's weights, what the block
granularity ranks by without calibration data), against the ground truth of
trying each removal alone: the validation loss and test accuracy with that
block removed (`granularity="block"` zeroes it; BERT is post-norm, so the
removed block still applies its two layer norms). Reported per seed: the
Spearman rank correlation of each score with the loss increase and with the
accuracy lost, and whether the block scored lowest is (one of) the cheapest.

`--part accuracy` (accuracy only): blocks kept 4 -> 3 -> 2, one-shot
(`prune(granularity=Blocks(calibration_data=...))`, no training) and with the
shrink's fine-tune (`shrink(granularity=Blocks(...), sparsity=0.25/0.5)`),
next to heads + feed-forward units (`granularity="unit"`) shrunk to the same
parameter count, each compacted and checked against the shrunk model.
Each compacted model (and the original) is saved under `--save-dir`.

`--part timing` (the only timed part, for a quiet machine, a few minutes):
loads the seed-0 models an accuracy run saved and times their traced
(`tf.function`) forward pass at batch 1 and 32, interleaved in one process
(median of the per-round ratios to the original).

Usage (repository root, project venv):

    nice -n 10 python benchmarks/bench_transformer_blocks.py --part agreement --seeds 3 \
        --json benchmarks/results/transformer_blocks_agreement.json
    nice -n 10 python benchmarks/bench_transformer_blocks.py --part accuracy --seeds 3 \
        --json benchmarks/results/transformer_blocks_accuracy.json
    nice -n 10 python benchmarks/bench_transformer_blocks.py --part agreement --seeds 3 --reuse-original \
        --json benchmarks/results/transformer_blocks_agreement.json   # the originals the accuracy run saved
    python benchmarks/bench_transformer_blocks.py --part timing \
        --json benchmarks/results/transformer_blocks_timing.json
    python benchmarks/bench_transformer_blocks.py --quick --part agreement   # smoke run
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench_transformer_heads import add_task_arguments, build, logits, make_data
from common.models import compile_model
from common.reporting import write_json

from keras_regkit.demo import deployable_copy

SEED = 0


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def loss_of(keras, model, x, y) -> float:
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits(model, x)))
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(y)), y], 1e-12))))


def original_path(args, seed) -> str:
    return os.path.join(args.save_dir, f"seed{seed}_original.keras")


def train(args, keras, keras_hub, seed):
    """The seed's data and trained original; with `--reuse-original`, the
    original an earlier run of either part saved for the seed, if any (the
    same recipe, so the same model: the parts then share one training)."""
    rng = np.random.default_rng(seed)
    data = [make_data(n, rng, args.seq_len, args.label_noise) for n in (args.train, args.val, args.test)]
    if args.reuse_original and os.path.exists(original_path(args, seed)):
        return keras.saving.load_model(original_path(args, seed), compile=False), data
    keras.utils.set_random_seed(seed)
    base = build(keras, keras_hub, args)
    compile_model(keras, base, args.lr)
    base.fit(*data[0], validation_data=data[1], epochs=args.train_epochs, batch_size=args.batch_size, verbose=0)
    os.makedirs(args.save_dir, exist_ok=True)
    deployable_copy(base).save(original_path(args, seed))
    return base, data


def agreement(args, keras, keras_hub, rk, seed):
    t0 = time.perf_counter()
    base, (_, (x_val, y_val), (x_test, y_test)) = train(args, keras, keras_hub, seed)
    calibration = {k: v[:256] for k, v in x_val.items()}
    blocks_lib = rk.pruning.blocks
    found = blocks_lib.find(base)
    scores = blocks_lib.output_scores(base, found, calibration)
    local = blocks_lib.block_scores(base, found, calibration)
    granularity = rk.pruning.Blocks()
    refs = granularity.select(base, "*")
    weight_scores = granularity.rank(refs, rk.pruning.Magnitude().scores(refs))[0]
    base_loss = loss_of(keras, base, x_val, y_val)
    base_acc = float((logits(base, x_test).argmax(1) == y_test).mean())
    removed = []
    for i, block in enumerate(found):
        model = deployable_copy(base)
        rk.prune(model, sparsity=1.0, granularity="block", layers=block.layer.name)
        removed.append({"block": block.path, "score": float(scores[i]), "local_score": float(local[i]),
                        "weight_score": float(weight_scores[i]),
                        "val_loss_increase": loss_of(keras, model, x_val, y_val) - base_loss,
                        "test_acc_delta_pp": 100 * (float((logits(model, x_test).argmax(1) == y_test).mean())
                                                    - base_acc)})
    row = {"seed": seed, "test_acc": base_acc, "val_loss": base_loss, "blocks": removed}
    costs = {"loss": [r["val_loss_increase"] for r in removed], "acc": [-r["test_acc_delta_pp"] for r in removed]}
    for name, values in (("score", scores), ("local_score", local), ("weight_score", weight_scores)):
        for against, cost in costs.items():
            row[f"spearman_{name}_vs_{against}"] = spearman(values, cost)
            # Ties in the cost (accuracy steps of 1/n): any of the cheapest counts.
            row[f"lowest_{name}_is_cheapest_by_{against}"] = bool(cost[int(np.argmin(values))] == min(cost))
    print(f"[seed {seed}] test acc {base_acc:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    for r in removed:
        print(f"  {r['block']}: output score {r['score']:.3f}, local score {r['local_score']:.3f}, weight score "
              f"{r['weight_score']:.3g}; removed: val loss {r['val_loss_increase']:+.4f}, test acc "
              f"{r['test_acc_delta_pp']:+.2f} pp", flush=True)
    print("  " + ", ".join(f"{k} {v:+.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                           if k.startswith(("spearman", "lowest"))), flush=True)
    return row


def accuracy(args, keras, keras_hub, rk, seed):
    base, ((x, y), (x_val, y_val), (x_test, y_test)) = train(args, keras, keras_hub, seed)
    calibration = {k: v[:256] for k, v in x_val.items()}
    base_acc = float((logits(base, x_test).argmax(1) == y_test).mean())
    runs = []

    def record(name, model, level):
        small = rk.compact(model)
        shrunk, compacted = logits(model, x_test), logits(small.model, x_test)
        run = {"setting": name, "level": level, "params": int(small.model.count_params()),
               "blocks_removed": len(small.removed_blocks),
               "test_acc": float((compacted.argmax(1) == y_test).mean()),
               "max_logit_diff_compacted_vs_shrunk": float(np.abs(compacted - shrunk).max())}
        run["acc_delta_pp"] = 100 * (run["test_acc"] - base_acc)
        run["file"] = os.path.join(args.save_dir, f"seed{seed}_{name.replace(' ', '_')}_{level}.keras")
        small.model.save(run["file"])
        print(f"  {name} {level}: {run['params']:,} params, test acc {run['test_acc']:.4f} "
              f"({run['acc_delta_pp']:+.2f} pp), compacted vs shrunk <= {run['max_logit_diff_compacted_vs_shrunk']:.1g}",
              flush=True)
        runs.append(run)
        return run

    for level in args.block_levels:
        model = deployable_copy(base)
        rk.prune(model, sparsity=level, granularity=rk.pruning.Blocks(calibration_data=calibration))
        record("blocks one-shot", model, level)
        model = deployable_copy(base)
        compile_model(keras, model, args.lr)
        rk.shrink(model, x, y, sparsity=level, epochs=args.epochs, batch_size=args.batch_size,
                  validation_data=(x_val, y_val), granularity=rk.pruning.Blocks(calibration_data=calibration))
        params = record("blocks shrink", model, level)["params"]
        # Heads and units to the same parameter count: the share of the
        # heads' and units' parameters the blocks' removal takes.
        model = deployable_copy(base)
        compile_model(keras, model, args.lr)
        share = (base.count_params() - params) / sum(
            int(np.prod(r.variable.shape)) for r in rk.pruning.Blocks().select(base, "*"))
        attention_or_ffn = lambda layer: (  # noqa: E731
            isinstance(layer, keras.layers.MultiHeadAttention) or layer.name == "feedforward_intermediate_dense")
        rk.shrink(model, x, y, sparsity=min(share, 0.95), epochs=args.epochs, batch_size=args.batch_size,
                  validation_data=(x_val, y_val), granularity="unit", layers=attention_or_ffn)
        record("heads+units shrink", model, round(min(share, 0.95), 3))
    return {"seed": seed, "test_acc": base_acc, "params": int(base.count_params()), "runs": runs}


def timing(args, keras, rk):
    """Traced throughput of the seed-0 models an accuracy run saved, over
    the original's, at batch 1 and 32."""
    import statistics

    import tensorflow as tf

    from common.measure import interleaved_seconds

    names = sorted(f for f in os.listdir(args.save_dir) if f.startswith("seed0_") and f.endswith(".keras"))
    names.remove("seed0_original.keras")
    models = [keras.saving.load_model(os.path.join(args.save_dir, n)) for n in ["seed0_original.keras"] + names]
    rows = {}
    for batch in (1, 32):
        x = make_data(batch, np.random.default_rng(0), args.seq_len)[0]
        x = {k: tf.constant(v) for k, v in x.items()}
        functions = [tf.function(lambda v, m=m: m(v, training=False), autograph=False) for m in models]
        rounds = interleaved_seconds([lambda f=f: f(x).numpy() for f in functions], args.repeats, args.calls,
                                     warmup=2)
        for name, seconds in zip(names, rounds[1:]):
            ratio = statistics.median(b / t for b, t in zip(rounds[0], seconds))
            rows.setdefault(name, {})[f"throughput_ratio_traced_batch{batch}"] = ratio
            print(f"  {name} batch {batch}: {ratio:.2f}x the original", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["agreement", "accuracy", "timing"], default="agreement")
    parser.add_argument("--save-dir", default="/tmp/bench_transformer_blocks",
                        help="the trained originals and the compacted models (accuracy)")
    parser.add_argument("--reuse-original", action="store_true",
                        help="load the seed's original from --save-dir when a run saved it, instead of training it")
    parser.add_argument("--first-seed", type=int, default=SEED)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (timing)")
    parser.add_argument("--calls", type=int, default=20, help="calls per timed round (timing)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--block-levels", type=float, nargs="*", default=[0.25, 0.5])
    add_task_arguments(parser)
    parser.add_argument("--epochs", type=int, default=2, help="shrink epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny model and data, one epoch")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.intermediate = 4, 32, 4, 64
        args.train, args.val, args.test, args.train_epochs, args.epochs = 400, 300, 200, 1, 1

    import keras
    import keras_hub

    import keras_regkit as rk

    t0 = time.perf_counter()
    if args.part == "timing":
        rows = timing(args, keras, rk)
        if args.json:
            write_json(args.json, {"settings": vars(args), "keras": keras.__version__, "timing": rows})
        return rows
    part = agreement if args.part == "agreement" else accuracy
    results = []
    for i in range(args.seeds):
        results.append(part(args, keras, keras_hub, rk, args.first_seed + i))
        if args.json:  # after each seed: a long run that is stopped keeps what it measured
            write_json(args.json, {"settings": vars(args), "keras": keras.__version__, "seeds": results})
    summary = {}
    if args.part == "agreement":
        summary = {key: [r[key] for r in results] for key in results[0] if key.startswith(("spearman", "lowest"))}
        print(f"\nover {len(results)} seeds: {summary}")
    print(f"total {time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f}")
    if args.json:
        write_json(args.json, {"settings": vars(args), "keras": keras.__version__, "summary": summary,
                               "seeds": results})
    return results


if __name__ == "__main__":
    main()
