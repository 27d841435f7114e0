"""2:4 semi-structured sparsity and one-shot Wanda, against their anchors.

Two tables (issue #28), test accuracy change against the model before
pruning, median and worst over seeds:

1. **Fine-tuned patterns**: `rk.shrink(sparsity=0.5)` with
   `granularity="2:4"` versus 50 % unstructured (`granularity="weight"`),
   the same 10-epoch budget from the same trained state, on the digits and
   MNIST-1D MLPs (300-100, benchmarks/common/protocol.py) and the MNIST-1D
   CNN of bench_compact.py (32 filters). TF-MOT's `sparsity_m_by_n=(2, 4)`
   on the same MLPs comes from its own environment:
   `benchmarks/tfmot/bench_tfmot.py --m-by-n 2 4 --targets 0.5 --seeds 5`.
2. **One-shot** (no training after the cut): `rk.prune` at 50 %, 70 % and 2:4,
   magnitude versus `score="wanda"` (256 training inputs as calibration),
   on the MNIST-1D CNN and the KerasHub BERT classifier of
   bench_transformer_shrink.py.

Kernels whose input axis does not split into groups of 4 (the CNN's first
convolution reads 1 channel) are left out of every variant alike.

Run (about 15 min on two shared cores):
    python benchmarks/bench_patterns.py [--seeds 5] [--out FILE.json]
    python benchmarks/bench_patterns.py --quick
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from common.models import build_cnn, compile_model
from common.protocol import BATCH_SIZE, LOADERS, SHRINK_EPOCHS, accuracy, resetter, train_baseline
from common.reporting import group, spread, write_json

CALIBRATION_SAMPLES = 256


def groupable(layer) -> bool:
    """Kernels whose input axis splits into groups of 4 (the same selection
    for every variant, so that they compare like with like)."""
    kernel = getattr(layer, "kernel", None)
    return kernel is not None and len(kernel.shape) >= 2 and kernel.shape[-2] % 4 == 0


def test_change(model, x_test, y_test, base_acc):
    return 100.0 * (accuracy(model, x_test, y_test) - base_acc)


def probabilities(model, x):
    logits = np.asarray(model.predict(x, batch_size=500, verbose=0), dtype="float64")
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def divergence(p, q):
    """Mean KL(p || q) over the test samples: how far the pruned model's
    predictions moved, where accuracy is saturated and cannot tell."""
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)))


def trained_cnn(keras, seed, quick):
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS["mnist1d"]()
    keras.utils.set_random_seed(seed)
    model = build_cnn(keras, x.shape[1:], filters=32)
    compile_model(keras, model)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3 if quick else 30, validation_data=(x_val, y_val), verbose=0)
    return model, ((x, y), (x_val, y_val), (x_test, y_test))


def fine_tuned(keras, rk, case, seed, quick):
    """Dense / 50 % unstructured / 2:4, each shrunk from the same state."""
    if case == "cnn":
        model, data = trained_cnn(keras, seed, quick)
    else:
        data = LOADERS[case]()
        (x, y), (x_val, y_val), _ = data
        model, _ = train_baseline(keras, case, x, y, x_val, y_val, quick=quick, seed=seed)
    (x, y), (x_val, y_val), (x_test, y_test) = data
    base_acc = accuracy(model, x_test, y_test)
    reset = resetter(keras, model)
    rows = []
    for granularity in ("weight", "2:4"):
        reset()
        keras.utils.set_random_seed(seed)
        rk.shrink(model, x, y, validation_data=(x_val, y_val), sparsity=0.5, granularity=granularity,
                  layers=groupable, epochs=2 if quick else SHRINK_EPOCHS, batch_size=BATCH_SIZE)
        rows.append({"case": case, "seed": seed, "variant": "50%" if granularity == "weight" else "2:4",
                     "change": test_change(model, x_test, y_test, base_acc),
                     "zeros": rk.sparsity_report(model).total.sparsity})
        print(f"  {case} seed {seed} {rows[-1]['variant']:>4}: {rows[-1]['change']:+.2f} pp", flush=True)
    return rows


def one_shot(keras, rk, case, model, data, seed, selection):
    (x, _), _, (x_test, y_test) = data
    calibration = keras.tree.map_structure(lambda a: a[:CALIBRATION_SAMPLES], x)
    base_acc = accuracy(model, x_test, y_test)
    base_p = probabilities(model, x_test)
    weights = model.get_weights()
    rows = []
    # 70 % unstructured too: where 50 % costs nothing, the scores can only differ beyond it.
    for granularity, sparsity, label in (("weight", 0.5, "50%"), ("weight", 0.7, "70%"), ("2:4", 0.5, "2:4")):
        # Wanda ranked as the package does (globally) and as the paper does (per output).
        rankings = [("magnitude", "global"), ("wanda", "global")]
        rankings += [("wanda", "per_output")] if granularity == "weight" else []
        for score, ranking in rankings:
            model.set_weights(weights)
            rk.prune(model, sparsity=sparsity, granularity=granularity, layers=selection, score=score,
                     calibration_data=calibration if score == "wanda" else None, ranking=ranking)
            name = score if ranking == "global" else f"{score} per output"
            rows.append({"case": case, "seed": seed, "variant": f"{label} {name}",
                         "change": test_change(model, x_test, y_test, base_acc),
                         "kl": divergence(base_p, probabilities(model, x_test))})
            print(f"  {case} seed {seed} one-shot {label} {name}: {rows[-1]['change']:+.2f} pp, "
                  f"KL {rows[-1]['kl']:.4f}", flush=True)
    model.set_weights(weights)
    return rows


def trained_encoder(keras, seed, quick):
    import keras_hub
    from bench_transformer_shrink import SPLITS, build, make_data

    rng = np.random.default_rng(seed)
    data = [make_data(SPLITS[k] // (4 if quick else 1), rng) for k in SPLITS]
    keras.utils.set_random_seed(seed)
    model = build(keras, keras_hub, 2, 64)
    compile_model(keras, model)
    (x, y), validation, _ = data
    model.fit(x, y, validation_data=validation, epochs=2 if quick else 6, batch_size=64, verbose=0)
    return model, data


def summarize(rows):
    """"case | variant" -> median and worst change over seeds (and the
    median divergence of the one-shot rows)."""
    summary = {}
    for (case, variant), runs in group(rows, lambda row: (row["case"], row["variant"])).items():
        summary[f"{case} | {variant}"] = {**spread(row["change"] for row in runs), "seeds": len(runs)}
        if "kl" in runs[0]:
            summary[f"{case} | {variant}"]["kl_median"] = statistics.median(row["kl"] for row in runs)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="fine-tuned table (the one-shot table takes 3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tables", nargs="+", default=["fine-tuned", "one-shot"], choices=["fine-tuned", "one-shot"])
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    import keras

    import keras_regkit as rk

    seeds = 1 if args.quick else args.seeds
    rows = []
    for case in ("digits", "mnist1d", "cnn") if "fine-tuned" in args.tables else ():
        for seed in range(seeds):
            rows += fine_tuned(keras, rk, case, seed, args.quick)
    shots = []
    for seed in range(1 if args.quick else 3) if "one-shot" in args.tables else ():
        model, data = trained_cnn(keras, seed, args.quick)
        shots += one_shot(keras, rk, "cnn", model, data, seed, groupable)
        model, data = trained_encoder(keras, seed, args.quick)
        shots += one_shot(keras, rk, "bert", model, data, seed,
                          lambda layer: isinstance(layer, keras.layers.Dense) and groupable(layer))
    summary = {"fine-tuned": summarize(rows), "one-shot": summarize(shots)}
    for table, figures in summary.items():
        print(f"\n{table}: test change vs the unpruned model, pp")
        for key, f in figures.items():
            kl = f"  KL {f['kl_median']:.4f}" if "kl_median" in f else ""
            print(f"  {key:<32} median {f['median']:+6.2f}  worst {f['worst']:+6.2f}{kl}  ({f['seeds']} seeds)")
    if args.out:
        write_json(args.out, {"summary": summary, "rows": rows + shots, "quick": args.quick})


if __name__ == "__main__":
    main()
