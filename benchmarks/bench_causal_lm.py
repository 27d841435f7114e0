"""One-shot pruning of a causal language model: held-out perplexity of a
small KerasHub GPT-2 decoder, dense and pruned by magnitude, Wanda and
weight reconstruction (SparseGPT), at 50 % and 2:4, with no training after
the cut (issue #39); and the time and host memory the reconstruction takes
against the model's size, for that decoder and a 4x larger one.

Corpus: the Python standard library's own `.py` files (tests excluded) as
bytes, 256 tokens; the files split 90/10 into training and held-out files
(by a fixed shuffle), so the held-out perplexity is on files never seen.

Model: `keras_hub.models.GPT2Backbone` from a small config (4 layers, hidden
128, 4 heads, feed-forward 512, 128-byte context: hidden 256 was too slow to
train on the two shared CPU cores this was run on) under its tied output
embedding, trained here for `--steps` steps of Adam at 2e-3 (batch 32; at
the default 200 the held-out perplexity is still falling, and the pruned
models' gaps are small: `--steps 1200` is the better-trained run, about
5x the training time).
Calibration: 64 training sequences of 128 bytes (8192 rows per layer, more
than the 512 inputs of the widest); held out: 128 sequences.

What is pruned: every projection of the decoder blocks that each method
covers. Wanda covers the feed-forward `Dense` layers only (its input norms
are per channel of a `Dense` or convolution), so the main table prunes the
feed-forward layers (2/3 of each block's weights) with every method; a
second table prunes every projection (the attention's `EinsumDense` too)
with magnitude and reconstruction. Embeddings and layer norms are never
pruned.

Perplexity: `exp` of the mean next-byte cross entropy over the held-out
sequences. Time and memory: wall time of `prune_reconstructed` and the peak
of the host allocations Python tracks (`tracemalloc`: NumPy's Gram
matrices, kernel copies and activation batches; TensorFlow's own tensors
are not counted), against the model's weights in bytes; both decoders
untrained for this part (time and memory do not depend on the weights).

Run (about 25 min on two shared cores at 200 steps):
    python benchmarks/bench_causal_lm.py [--steps 200] [--out benchmarks/results/causal_lm_results.json]
    python benchmarks/bench_causal_lm.py --quick
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sysconfig
import time
import tracemalloc

import numpy as np

from common import result_path
from common.reporting import write_json

CONTEXT = 128
SMALL = dict(num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512)
LARGE = dict(num_layers=4, num_heads=8, hidden_dim=256, intermediate_dim=1024)  # 4x the weights
CALIBRATION = 64
HELD_OUT = 128


def corpus(seed=0):
    """(training bytes, held-out bytes): the standard library's files,
    split by file."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in f and f"{os.sep}test" not in f[len(root):])
    order = np.random.default_rng(seed).permutation(len(files))
    held = set(order[: len(files) // 10].tolist())
    parts = ([], [])
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            parts[i in held].append(np.frombuffer(f.read(), dtype=np.uint8))
    return tuple(np.concatenate(p).astype("int32") for p in parts)


def windows(tokens, count, rng):
    """`count` random windows of CONTEXT + 1 bytes: inputs and next bytes."""
    starts = rng.integers(0, len(tokens) - CONTEXT - 1, size=count)
    chunk = np.stack([tokens[s:s + CONTEXT + 1] for s in starts])
    x = {"token_ids": chunk[:, :-1], "padding_mask": np.ones((count, CONTEXT), "int32")}
    return x, chunk[:, 1:]


def build(keras, keras_hub, config):
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, max_sequence_length=CONTEXT, dropout=0.0,
                                             **config)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def perplexity(model, x, y):
    logits = np.asarray(model.predict(x, batch_size=64, verbose=0), dtype="float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(np.exp(-np.take_along_axis(log_p, y[..., None], axis=-1).mean()))


def is_ffn(layer):
    return layer.name.startswith("feedforward_")


def is_projection(layer):
    return is_ffn(layer) or layer.name in ("query", "key", "value", "attention_output")


def variants(rk):
    """(table, level, method, function of (model, calibration))."""
    def magnitude(layers, granularity):
        return lambda m, c: rk.prune(m, sparsity=0.5 if granularity == "weight" else None,
                                     granularity=granularity, layers=layers)

    def wanda(layers, granularity, ranking):
        return lambda m, c: rk.prune(m, sparsity=0.5 if granularity == "weight" else None, score="wanda",
                                     granularity=granularity, layers=layers, calibration_data=c, ranking=ranking)

    def reconstruction(layers, granularity, allocation):
        return lambda m, c: rk.pruning.prune_reconstructed(
            m, sparsity=0.5 if granularity == "weight" else None, granularity=granularity, layers=layers,
            calibration_data=c, allocation=allocation, batch_size=64)

    rows = []
    for level, granularity in (("50%", "weight"), ("2:4", "2:4")):
        rows += [("feed-forward", level, "magnitude", magnitude(is_ffn, granularity)),
                 ("feed-forward", level, "wanda", wanda(is_ffn, granularity, "global"))]
        if granularity == "weight":
            rows += [("feed-forward", level, "wanda per output", wanda(is_ffn, granularity, "per_output"))]
        rows += [("feed-forward", level, "reconstruction", reconstruction(is_ffn, granularity, "global"))]
    rows += [("all projections", "50%", "magnitude", magnitude(is_projection, "weight")),
             ("all projections", "50%", "reconstruction uniform", reconstruction(is_projection, "weight", "uniform")),
             ("all projections", "50%", "reconstruction", reconstruction(is_projection, "weight", "global")),
             ("all projections", "2:4", "magnitude", magnitude(is_projection, "2:4")),
             ("all projections", "2:4", "reconstruction", reconstruction(is_projection, "2:4", "global"))]
    return rows


def quality(keras, keras_hub, rk, args):
    train, held = corpus()
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = build(keras, keras_hub, SMALL)
    x_test, y_test = windows(held, HELD_OUT // (4 if args.quick else 1), rng)
    start = time.perf_counter()
    for step in range(0, args.steps, 100):
        x, y = windows(train, 32 * min(100, args.steps - step), rng)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        print(f"  step {step + 100}: held-out perplexity {perplexity(model, x_test, y_test):.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - start
    calibration, _ = windows(train, CALIBRATION, rng)
    weights = model.get_weights()
    rows = [{"table": "dense", "level": "-", "method": "dense", "perplexity": perplexity(model, x_test, y_test)}]
    for table, level, method, cut in variants(rk):
        model.set_weights(weights)
        start = time.perf_counter()
        result = cut(model, calibration)
        rows.append({"table": table, "level": level, "method": method, "perplexity": perplexity(model, x_test, y_test),
                     "zeros": result.sparsity, "seconds": time.perf_counter() - start})
        print(f"  {table:<16} {level:>4} {method:<22} perplexity {rows[-1]['perplexity']:.3f} "
              f"(zeros {result.sparsity:.3f}, {rows[-1]['seconds']:.1f} s)", flush=True)
    return rows, {"train_bytes": int(len(train)), "held_out_bytes": int(len(held)), "steps": args.steps,
                  "train_seconds": train_seconds}


def cost(keras, keras_hub, rk, config, label):
    """Time and peak traced host memory of `prune_reconstructed` on an
    untrained decoder of `config`, against its weights' bytes."""
    keras.utils.set_random_seed(0)
    model = build(keras, keras_hub, config)
    calibration, _ = windows(np.random.default_rng(1).integers(0, 256, 200_000).astype("int32"), CALIBRATION,
                             np.random.default_rng(2))
    model.predict({k: v[:2] for k, v in calibration.items()}, verbose=0)
    params = sum(int(np.prod(v.shape)) for v in model.weights)
    pruned = sum(int(np.prod(ref.variable.shape)) for ref in rk.iter_weights(model, layers=is_projection))
    tracemalloc.start()
    start = time.perf_counter()
    rk.pruning.prune_reconstructed(model, sparsity=0.5, layers=is_projection, calibration_data=calibration,
                                   batch_size=64)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    row = {"model": label, **config, "params": params, "pruned_params": pruned, "weights_mb": 4 * params / 2**20,
           "seconds": seconds, "peak_host_mb": peak / 2**20}
    print(f"  {label}: {params / 1e6:.2f} M weights ({row['weights_mb']:.1f} MB), pruned {pruned / 1e6:.2f} M: "
          f"{seconds:.1f} s, peak traced host memory {row['peak_host_mb']:.1f} MB", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", nargs="+", default=["quality", "cost"], choices=["quality", "cost"])
    parser.add_argument("--out", default=result_path("causal_lm_results.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 100
    import keras
    import keras_hub

    import keras_regkit as rk

    payload = {"config": SMALL, "context": CONTEXT, "calibration": CALIBRATION, "held_out": HELD_OUT,
               "backend": keras.backend.backend()}
    if "quality" in args.parts:
        payload["rows"], payload["training"] = quality(keras, keras_hub, rk, args)
        dense = payload["rows"][0]["perplexity"]
        print(f"\nheld-out perplexity (dense {dense:.3f})")
        for row in payload["rows"][1:]:
            print(f"  {row['table']:<16} {row['level']:>4} {row['method']:<22} {row['perplexity']:8.3f}")
    if "cost" in args.parts:
        payload["cost"] = [cost(keras, keras_hub, rk, SMALL, "small"), cost(keras, keras_hub, rk, LARGE, "4x")]
    if not args.quick:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
