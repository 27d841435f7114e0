"""What do the shrink and `compact` become in a deployed file? Size, latency
and accuracy of LiteRT and ONNX files, each checked in its runtime.

For the digits MLP and the MNIST-1D CNN of `bench_compact.py` (same
builders, data and training; optionally the KerasHub BERT classifier of
`bench_transformer_shrink.py`, `--cases bert`), in one process:

1. train the baseline (`dense`);
2. from the same trained state (weights and optimizer slots put back
   between runs), `rk.shrink(sparsity=0.95)` (`sparse95`: unstructured
   zeros) and, for the storage figures only, `sparsity=0.98` (`sparse98`);
3. from that state again, the unit shrink of `bench_compact.py`'s recipe
   (`granularity="unit"`), then `rk.compact` (`compact`).

Each model is written with `keras_regkit.export` as LiteRT (`.tflite`) and
ONNX (`.onnx`): float, int8 (post-training, calibrated on 200 training
samples) and dynamic int8 (int8 weights, activations quantized per call),
the sparse models also with `sparse=True` (zeros stored sparse; LiteRT
refuses sparse int8, see `deploy.py`). Every file is checked in its
runtime against the Keras model on the whole test set (`check=`: float files
to 1e-4 of the logits' scale, int8 files by top-1 agreement >= 0.95) and its
test accuracy there is reported as the change from the Keras dense model, in
points.

Latency: one runtime thread (`ai_edge_litert` interpreter with its default
XNNPACK delegate; `onnxruntime` CPU provider), a call = inputs copied in,
run, output copied out. Every file is timed in each round, round after round
(interleaved), `--calls` calls a round; reported are the median over
`--repeats` rounds of the per-call time and the p25-p75 spread. On a shared
machine the figures are noisy: compare ratios within one run.

Usage (repository root, project venv with the `[export]` and `[demo]` extras):

    python benchmarks/bench_deploy.py --cases mlp cnn bert --out benchmarks/results/deploy_results.json
    python benchmarks/bench_deploy.py --quick                                 # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from common.measure import median_and_quartiles, runtime_milliseconds
from common.models import compile_model
from common.protocol import BATCH_SIZE, LOADERS, SEED, SHRINK_EPOCHS, resetter
from common.reporting import write_json

CALIBRATION = 200  # training samples the int8 files are calibrated on
UNSTRUCTURED = {"sparse95": 0.95, "sparse98": 0.98}
# The targets for the compacted int8 LiteRT file against the dense float one.
TARGET_SMALLER, TARGET_FASTER_B1, TARGET_POINTS = 10.0, 2.0, 1.0


def _take(x, n):
    import keras

    return keras.tree.map_structure(lambda a: a[:n], x)


def _logits(model, x):
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def load_case(name, args, keras):
    """(model, train, test, unit recipe, shrink kwargs) of one case, trained."""
    if name == "bert":
        import keras_hub

        import bench_transformer_shrink as transformer

        rng = np.random.default_rng(SEED)
        n = {k: v // (4 if args.quick else 1) for k, v in transformer.SPLITS.items()}
        (x, y), (x_val, y_val), (x_test, y_test) = (transformer.make_data(n[k], rng) for k in ("train", "val", "test"))
        keras.utils.set_random_seed(SEED)
        model = transformer.build(keras, keras_hub, 2, 32 if args.quick else 64)
        compile_model(keras, model)
        model.fit(x, y, epochs=2 if args.quick else 6, batch_size=BATCH_SIZE, verbose=0)
        # Units of the feed-forward blocks only, as bench_transformer_shrink does.
        unit = {"sparsity": 0.9, "epochs": 3, "layers": "*feedforward_intermediate_dense"}
        return model, (x, y), (x_val, y_val), (x_test, y_test), unit
    import bench_compact

    dataset, build, epochs = bench_compact.CASES[name]
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS[dataset]()
    keras.utils.set_random_seed(SEED)
    model = build(keras, x.shape[1:])
    compile_model(keras, model)
    model.fit(x, y, epochs=2 if args.quick else epochs, batch_size=BATCH_SIZE, verbose=0)
    unit = dict(bench_compact.RECIPES[name], epochs=3 if args.quick else bench_compact.SHRINK_EPOCHS)
    return model, (x, y), (x_val, y_val), (x_test, y_test), unit


def make_models(name, args, keras, rk):
    """The Keras models of one case: dense, the unstructured shrinks and the compacted one."""
    from keras_regkit.demo import deployable_copy

    t0 = time.perf_counter()
    model, (x, y), (x_val, y_val), test, unit = load_case(name, args, keras)
    models = {"dense": deployable_copy(model)}
    reset = resetter(keras, model)
    epochs = 2 if args.quick else SHRINK_EPOCHS
    for key, sparsity in UNSTRUCTURED.items():
        reset()
        rk.shrink(model, x, y, sparsity=sparsity, epochs=epochs, batch_size=BATCH_SIZE,
                  validation_data=(x_val, y_val))
        models[key] = deployable_copy(model)
    reset()
    unit = dict(unit)
    rk.shrink(model, x, y, epochs=unit.pop("epochs"), batch_size=BATCH_SIZE, validation_data=(x_val, y_val),
              granularity="unit", **unit)
    models["compact"] = rk.compact(model).model
    print(f"[{name}] trained and shrunk in {time.perf_counter() - t0:.0f}s; params: "
          + ", ".join(f"{k} {m.count_params():,}" for k, m in models.items())
          + "; kernel zeros: " + ", ".join(f"{k} {rk.sparsity_report(m).total.sparsity:.1%}"
                                            for k, m in models.items()), flush=True)
    return models, x, test


def export_all(models, x, test, folder, rk):
    """Every file of the case, each checked in its runtime; returns rows."""
    x_test, y_test = test
    calibration = _take(x, CALIBRATION)
    rows = []
    for key, model in models.items():
        keras_acc = float(np.mean(_logits(model, x_test).argmax(1) == y_test))
        for fmt in (".tflite", ".onnx"):
            for int8 in (False, True, "dynamic"):
                for sparse in ((False, True) if key in UNSTRUCTURED else (False,)):
                    if (fmt == ".tflite" and int8 and sparse) or (int8 == "dynamic" and sparse):
                        continue  # refused (LiteRT's default delegate cannot run it), or one too many rows
                    tag = {False: "", True: "_int8", "dynamic": "_dyn"}[int8]
                    path = os.path.join(folder, f"{key}{tag}{'_sparse' if sparse else ''}{fmt}")
                    result = rk.export(model, path, int8=int8, sparse=sparse,
                                       representative_data=calibration if int8 else None, check=x_test)
                    runtime_logits = rk.deploy.Runtime(path)(x_test)
                    rows.append({
                        "model": key, "format": result.format, "int8": int8, "sparse": sparse, "path": path,
                        "file_bytes": result.file_bytes, "max_abs_diff": result.max_abs_diff,
                        "top1_agreement": result.top1_agreement, "keras_test_acc": keras_acc,
                        "test_acc": float(np.mean(runtime_logits.argmax(1) == y_test)),
                    })
    return rows


def time_files(rows, x_test, batch, repeats, calls, rk):
    """Median and p25-p75 of the per-call time of each file, interleaved rounds."""
    runtimes = [rk.deploy.Runtime(r["path"], num_threads=1) for r in rows]
    for row, samples in zip(rows, runtime_milliseconds(runtimes, _take(x_test, batch), repeats, calls)):
        row[f"b{batch}_ms"], row[f"b{batch}_ms_p25_p75"] = median_and_quartiles(samples)


def label(row):
    kind = {False: "float", True: "int8", "dynamic": "int8 dyn"}[row["int8"]] + (" sparse" if row["sparse"] else "")
    return f"{row['model']:<9} {row['format']:<7} {kind:<12}"


def report(name, rows):
    dense_acc = next(r["keras_test_acc"] for r in rows if r["model"] == "dense")
    print(f"\n[{name}] Keras dense test accuracy {dense_acc:.4f}; latency median [p25-p75] ms, 1 thread")
    print(f"  {'model':<9} {'format':<7} {'storage':<12} {'KiB':>8} {'size x':>7} {'batch 1 ms':>21} "
          f"{'batch 64 ms':>21} {'acc':>7} {'d pt':>6} {'agree':>6}")
    for row in rows:
        base = next(r for r in rows if r["model"] == "dense" and r["format"] == row["format"]
                    and not r["int8"] and not r["sparse"])
        row["size_ratio_vs_dense_float"] = base["file_bytes"] / row["file_bytes"]
        row["speedup_b1_vs_dense_float"] = base["b1_ms"] / row["b1_ms"]
        row["acc_delta_pt_vs_keras_dense"] = 100 * (row["test_acc"] - dense_acc)
        b1, b64 = row["b1_ms_p25_p75"], row["b64_ms_p25_p75"]
        print(f"  {label(row)} {row['file_bytes'] / 1024:>8.1f} {row['size_ratio_vs_dense_float']:>6.1f}x "
              f"{row['b1_ms']:>7.4f} [{b1[0]:.4f}-{b1[1]:.4f}] {row['b64_ms']:>7.3f} [{b64[0]:.3f}-{b64[1]:.3f}] "
              f"{row['test_acc']:>7.4f} {row['acc_delta_pt_vs_keras_dense']:>+6.2f} {row['top1_agreement']:>6.3f}")
    target = next(r for r in rows if r["model"] == "compact" and r["format"] == "litert" and r["int8"] is True)
    met = (target["size_ratio_vs_dense_float"] >= TARGET_SMALLER
           and target["speedup_b1_vs_dense_float"] >= TARGET_FASTER_B1
           and target["acc_delta_pt_vs_keras_dense"] >= -TARGET_POINTS)
    print(f"  target (compact int8 LiteRT vs dense float LiteRT: >= {TARGET_SMALLER:.0f}x smaller, "
          f">= {TARGET_FASTER_B1:.0f}x faster at batch 1, within {TARGET_POINTS:.0f} pt): "
          f"{target['size_ratio_vs_dense_float']:.1f}x smaller, {target['speedup_b1_vs_dense_float']:.2f}x "
          f"faster, {target['acc_delta_pt_vs_keras_dense']:+.2f} pt -> {'met' if met else 'NOT met'}", flush=True)
    return {"size_ratio": target["size_ratio_vs_dense_float"], "speedup_b1": target["speedup_b1_vs_dense_float"],
            "acc_delta_pt": target["acc_delta_pt_vs_keras_dense"], "met": met}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn", "bert"])
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds")
    parser.add_argument("--calls", type=int, default=20, help="calls per file per round (batch 64: a quarter)")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere, few repeats")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.calls = 3, 4

    import keras
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert import __version__ as litert_version

    import keras_regkit as rk

    tf.get_logger().setLevel("ERROR")  # predict's retracing notes: one trace per model is expected here
    versions = {"keras": keras.__version__, "tensorflow": tf.__version__, "ai_edge_litert": litert_version,
                "onnxruntime": onnxruntime.__version__}
    print(", ".join(f"{k} {v}" for k, v in versions.items())
          + f"; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    results = {}
    for name in args.cases:
        models, x, (x_test, y_test) = make_models(name, args, keras, rk)
        with tempfile.TemporaryDirectory() as folder:
            rows = export_all(models, x, (x_test, y_test), folder, rk)
            time_files(rows, x_test, 1, args.repeats, args.calls, rk)
            time_files(rows, x_test, 64, args.repeats, max(1, args.calls // 4), rk)
        for row in rows:
            del row["path"]
        results[name] = {"rows": rows, "target": report(name, rows)}
    print(f"load {os.getloadavg()[0]:.1f}")
    if args.out:
        write_json(args.out, {"versions": versions, "cpus": os.cpu_count(), "settings": vars(args),
                              "cases": results})
    return results


if __name__ == "__main__":
    main()
