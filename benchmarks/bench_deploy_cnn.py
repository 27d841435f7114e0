"""The whole workflow on keras.applications CNNs: train -> unit shrink
(sparsity mode, quantization-aware, tolerance mode) -> `compact` ->
`export` (float, dynamic int8, full int8; ONNX QDQ int8), each file run in
its runtime.

Data: scikit-learn's digits (`common.data`, the demo's split: 1295
training, 143 validation, 359 test images), upscaled (nearest neighbour)
to `--size` x `--size` x 3. Models: `MobileNetV2(alpha=0.35)` and
`EfficientNetB0`, `weights=None`, ten classes, trained from scratch with
Adam 1e-3 (the applications end in a softmax: the loss reads
probabilities). Their BatchNormalization momentum (0.999 in MobileNetV2,
0.99 in EfficientNet) leaves the moving statistics far behind the weights
after a few hundred steps of training, so the baseline's are re-estimated
on the training images after `fit` (`refresh_batch_norm`), as a user whose
model is right in training mode and wrong in inference would do; without
it the inference-mode MobileNetV2 is at chance. The shrinks need no such
step: since 0.5.0 `shrink()` ends with that refresh itself.

Per architecture and seed, from the same trained state (weights and
optimizer slots put back between runs):

- `dense`: the trained model (float, dynamic, full int8, ONNX int8);
- `shrunk`: `shrink(sparsity=--sparsity, granularity="unit")` as it
  leaves the model, not compacted (full int8);
- `compact`: that shrink, compacted (float, dynamic, full int8, ONNX
  int8);
- `compact_qat` (`--modes qat`): the same shrink with `int8=True` (the
  quantization-aware shrink, `representative_data` the 200 calibration
  images), compacted (full int8, ONNX int8);
- `compact_tol` (`--modes tolerance`): `shrink(tolerance=--tolerance,
  granularity="unit")`, compacted (float, full int8);
- `trivial` (float only): global average pooling and a Dense layer on the
  same input, the runtime's per-call cost, for the latency run.

Each `.tflite` file is exported with `int8=True` calibrated on 200
training images, checked on the test images with `min_agreement=0` (the
agreement is reported, not enforced; `passes_check` says whether the
default 0.95 would pass). ONNX files (`onnx_int8`: ONNX Runtime's QDQ
static quantization, calibrated on the same images) are checked in ONNX
Runtime. Reported per file: top-1 agreement with its own Keras model, test
accuracy in the runtime and its change from the Keras dense model (points),
file size and, in the latency run, batch-1 and batch-32 latency (LiteRT,
one thread, XNNPACK), each against the dense float file of the same seed,
in the same run.

Runs of different architectures (at different `--size`) or seeds add
their rows to the same `--files` folder (a run replaces only the rows of
its own architectures and seeds), so that one latency run times them all:

    nice -n 10 python benchmarks/bench_deploy_cnn.py --archs mobilenetv2 --size 64 --seeds 0 1 2 --epochs 10 \\
        --shrink-epochs 6 --sparsity 0.6 --modes qat --files /tmp/deploy_cnn \\
        --out benchmarks/results/deploy_cnn_results.json
    nice -n 10 python benchmarks/bench_deploy_cnn.py --archs efficientnetb0 --size 64 --seeds 0 1 2 --epochs 8 \\
        --shrink-epochs 6 --sparsity 0.4 --modes qat --files /tmp/deploy_cnn \\
        --out benchmarks/results/deploy_cnn_results.json
    python benchmarks/bench_deploy_cnn.py --latency-only --files /tmp/deploy_cnn \\
        --out benchmarks/results/deploy_cnn_results.json      # quiet machine, <= 8 min: adds b1_ms, b32_ms
    python benchmarks/bench_deploy_cnn.py --quick --archs mobilenetv2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from common.data import LOADERS
from common.measure import median_and_quartiles, runtime_milliseconds
from common.protocol import BATCH_SIZE, resetter
from common.reporting import read_json, write_json

ARCHS = ("mobilenetv2", "efficientnetb0")
CALIBRATION = 200  # training images the full-int8 files are calibrated on
KINDS = {False: "float", "dynamic": "dynamic", True: "int8"}
# The targets: compacted full-int8 MobileNetV2 vs its dense float file in LiteRT.
TARGET_SMALLER, TARGET_FASTER_B1, TARGET_POINTS = 4.0, 2.0, 1.0


def digits_images(size):
    """The digits splits as `size` x `size` x 3 images in [0, 1]."""
    def upscale(x):
        x = x.reshape(-1, 8, 8, 1)
        x = np.repeat(np.repeat(x, -(-size // 8), 1), -(-size // 8), 2)[:, :size, :size]
        return np.repeat(x, 3, -1).astype("float32")

    return [(upscale(x), y) for x, y in LOADERS["digits"]()]


def build(keras, arch, size):
    """The application, untrained, ten classes; and the input scale it
    expects (EfficientNet rescales 0-255 images itself)."""
    shape = (size, size, 3)
    if arch == "mobilenetv2":
        return keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=shape, classes=10), 1.0
    return keras.applications.EfficientNetB0(weights=None, input_shape=shape, classes=10), 255.0


def accuracy(predictions, y):
    return float(np.mean(np.asarray(predictions).argmax(-1) == y))


def trivial_model(keras, size):
    """The runtime's per-call cost: pooling and one Dense layer."""
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(inputs)))


def make_models(keras, rk, arch, seed, args):
    """{name: Keras model} of one architecture and seed, and the data."""
    from keras_regkit.demo import deployable_copy

    (x, y), (x_val, y_val), (x_test, y_test) = digits_images(args.size)
    keras.utils.set_random_seed(seed)
    model, scale = build(keras, arch, args.size)
    x, x_val, x_test = x * scale, x_val * scale, x_test * scale
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0)
    # Both figures, so that a refresh that did not take is seen (at chance
    # before it, MobileNetV2's 0.999 momentum; the model's own after it).
    stale_acc = accuracy(model.predict(x_test, verbose=0), y_test)
    rk.deploy.refresh_batch_norm(model, x)
    print(f"[{arch} seed {seed}] trained in {time.perf_counter() - start:.0f}s, test accuracy "
          f"{accuracy(model.predict(x_test, verbose=0), y_test):.4f} "
          f"(before refresh_batch_norm: {stale_acc:.4f})", flush=True)
    models = {"dense": deployable_copy(model), "trivial": trivial_model(keras, args.size)}
    reset = resetter(keras, model)
    shrinks = {"": {"sparsity": args.sparsity}}
    if "qat" in args.modes:
        shrinks["_qat"] = {"sparsity": args.sparsity, "int8": True, "representative_data": x[:CALIBRATION]}
    if "tolerance" in args.modes:
        shrinks["_tol"] = {"tolerance": args.tolerance}
    for tag, options in shrinks.items():
        reset()
        start = time.perf_counter()
        result = rk.shrink(model, x, y, granularity="unit", epochs=args.shrink_epochs, batch_size=BATCH_SIZE,
                           validation_data=(x_val, y_val), **options)
        if not tag:
            models["shrunk"] = deployable_copy(model)  # as the shrink leaves it (refreshed by it)
        stale = max(rk.deploy.stale_batch_norm(model, x[:CALIBRATION]).values(), default=1.0)
        models[f"compact{tag}"] = rk.compact(deployable_copy(model)).model
        print(f"[{arch} seed {seed}] shrink{tag} {result.sparsity:.1%} zeros in {time.perf_counter() - start:.0f}s "
              f"({result.outcome}); stale BatchNormalization RMS up to {stale:.1f} (1: none); compact: "
              f"{models[f'compact{tag}'].count_params():,} of {models['dense'].count_params():,} parameters",
              flush=True)
    return models, (x, y), (x_test, y_test)


# The files each model is exported to (ONNX: `onnx_int8`).
FILES = {"dense": ("float", "dynamic", "int8", "onnx_int8"), "shrunk": ("int8",),
         "compact": ("float", "dynamic", "int8", "onnx_int8"), "compact_qat": ("int8", "onnx_int8"),
         "compact_tol": ("float", "int8"), "trivial": ("float",)}
EXPORTS = {"float": (False, "tflite"), "dynamic": ("dynamic", "tflite"), "int8": (True, "tflite"),
           "onnx_int8": (True, "onnx")}


def export_all(rk, models, x, test, folder, prefix, onnx=True):
    """Every file of one architecture and seed, checked in its runtime; rows."""
    x_test, y_test = test
    rows = []
    dense_acc = accuracy(models["dense"].predict(x_test, verbose=0), y_test)
    for name, model in models.items():
        keras_acc = accuracy(model.predict(x_test, verbose=0), y_test)
        for kind in FILES[name]:
            int8, extension = EXPORTS[kind]
            if extension == "onnx" and not onnx:
                continue
            path = os.path.join(folder, f"{prefix}_{name}_{kind}.{extension}")
            started = time.perf_counter()
            result = rk.export(model, path, int8=int8, representative_data=x[:CALIBRATION] if int8 is True else None,
                               check=x_test, min_agreement=0.0)
            runtime_acc = accuracy(rk.deploy.Runtime(path)(x_test), y_test)
            rows.append({"model": name, "kind": kind, "file": os.path.basename(path), "file_bytes": result.file_bytes,
                         "top1_agreement": result.top1_agreement,
                         "passes_check": result.top1_agreement >= rk.deploy.MIN_INT8_AGREEMENT or not int8,
                         "keras_test_acc": keras_acc, "test_acc": runtime_acc,
                         "acc_delta_pt_vs_keras_dense": 100 * (runtime_acc - dense_acc),
                         "acc_delta_pt_vs_own_keras": 100 * (runtime_acc - keras_acc)})
            print(f"  {name:<12} {kind:<9} {result.file_bytes / 1024:>8.1f} KiB  agreement "
                  f"{result.top1_agreement:.3f}  acc {runtime_acc:.4f} (Keras {keras_acc:.4f})  "
                  f"[{time.perf_counter() - started:.0f}s]", flush=True)
    return rows


# The files the latency run times (LiteRT): the target's and the runtime's per-call cost.
TIMED = {("dense", "float"), ("dense", "dynamic"), ("dense", "int8"), ("compact", "float"), ("compact", "dynamic"),
         ("compact", "int8"), ("compact_qat", "int8"), ("trivial", "float")}


def time_files(rk, rows, folder, x, batch, repeats, calls):
    """Median and p25-p75 per-call time of every file, in interleaved rounds."""
    runtimes = [rk.deploy.Runtime(os.path.join(folder, row["file"]), num_threads=1) for row in rows]
    for row, samples in zip(rows, runtime_milliseconds(runtimes, x[:batch], repeats, calls)):
        row[f"b{batch}_ms"], row[f"b{batch}_ms_p25_p75"] = median_and_quartiles(samples)


def ratios(rows):
    """Each row's size and latency against the dense float file of its
    architecture and seed."""
    for row in rows:
        base = next(r for r in rows if r["arch"] == row["arch"] and r["seed"] == row["seed"]
                    and r["model"] == "dense" and r["kind"] == "float")
        row["size_ratio_vs_dense_float"] = base["file_bytes"] / row["file_bytes"]
        for batch in (1, 32):
            if f"b{batch}_ms" in row:
                row[f"speedup_b{batch}_vs_dense_float"] = base[f"b{batch}_ms"] / row[f"b{batch}_ms"]


def summary(rows):
    """Per architecture, model and kind: the median over seeds (and the
    worst) of each figure; the MobileNetV2 target."""
    table = {}
    for row in rows:
        table.setdefault((row["arch"], row["model"], row["kind"]), []).append(row)
    fields = ("top1_agreement", "test_acc", "acc_delta_pt_vs_keras_dense", "size_ratio_vs_dense_float",
              "speedup_b1_vs_dense_float", "speedup_b32_vs_dense_float", "b1_ms", "b32_ms")
    out = []
    for (arch, model, kind), group in table.items():
        entry = {"arch": arch, "model": model, "kind": kind, "seeds": len(group)}
        for field in fields:
            values = [r[field] for r in group if field in r]
            if values:
                entry[field] = statistics.median(values)
                entry[field + "_min"] = min(values)
        out.append(entry)
    print(f"\n{'arch':<15} {'model':<12} {'kind':<8} {'agree':>6} {'acc':>7} {'d pt':>6} {'size x':>7} "
          f"{'b1 x':>6} {'b32 x':>6}   (median of seeds)")
    for e in out:
        print(f"{e['arch']:<15} {e['model']:<12} {e['kind']:<8} {e['top1_agreement']:>6.3f} {e['test_acc']:>7.4f} "
              f"{e['acc_delta_pt_vs_keras_dense']:>+6.2f} {e['size_ratio_vs_dense_float']:>6.1f}x "
              f"{e.get('speedup_b1_vs_dense_float', float('nan')):>5.2f}x "
              f"{e.get('speedup_b32_vs_dense_float', float('nan')):>5.2f}x")
    for arch in sorted({e["arch"] for e in out}):
        dense, trivial = (next((e for e in out if e["arch"] == arch and e["model"] == m and e["kind"] == "float"
                                and "b1_ms" in e), None) for m in ("dense", "trivial"))
        if dense and trivial:  # compute dominates when the trivial model's call is a small part
            print(f"{arch}: dense float {dense['b1_ms']:.3f} ms at batch 1, a trivial model on the same input "
                  f"{trivial['b1_ms']:.3f} ms (the runtime's per-call cost)")
    target = next((e for e in out if e["arch"] == "mobilenetv2" and e["model"] == "compact" and e["kind"] == "int8"),
                  None)
    met = None
    if target is not None and "speedup_b1_vs_dense_float" in target:
        met = (target["size_ratio_vs_dense_float"] >= TARGET_SMALLER
               and target["speedup_b1_vs_dense_float"] >= TARGET_FASTER_B1
               and target["acc_delta_pt_vs_keras_dense"] >= -TARGET_POINTS)
        print(f"target (compacted full-int8 MobileNetV2 vs dense float, LiteRT: >= {TARGET_SMALLER:.0f}x smaller, "
              f">= {TARGET_FASTER_B1:.0f}x faster at batch 1, within {TARGET_POINTS:.0f} pt): "
              f"{'met' if met else 'NOT met'}")
    return {"rows": out, "target_met": met}


def timing(rk, manifest, folder, args):
    """Batch-1 and batch-32 latency of the timed LiteRT files (`TIMED`)."""
    inputs = np.load(os.path.join(folder, "inputs.npz"))
    started = time.perf_counter()
    for arch in sorted({row["arch"] for row in manifest["rows"]}):
        for seed in sorted({row["seed"] for row in manifest["rows"] if row["arch"] == arch}):
            rows = [r for r in manifest["rows"] if r["arch"] == arch and r["seed"] == seed
                    and (r["model"], r["kind"]) in TIMED]
            for batch in (1, 32):
                time_files(rk, rows, folder, inputs[arch], batch, args.repeats,
                           args.calls if batch == 1 else max(1, args.calls // 8))
            print(f"timed {arch} seed {seed} ({time.perf_counter() - started:.0f}s so far)", flush=True)
    manifest["latency"] = {"load_before": os.getloadavg()[0], "repeats": args.repeats, "calls": args.calls,
                           "threads": 1, "processor": platform.processor() or platform.machine()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=96, help="input side, pixels")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--shrink-epochs", type=int, default=6)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--modes", nargs="*", default=["qat", "tolerance"], choices=["qat", "tolerance"],
                        help="shrinks besides the sparsity mode: quantization-aware (int8=True), tolerance mode")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX files")
    parser.add_argument("--files", default="deploy_cnn_files", help="folder for the .tflite files and manifest")
    parser.add_argument("--latency-only", action="store_true", help="time the files of an earlier run in --files")
    parser.add_argument("--report-only", action="store_true",
                        help="write --out from the manifest in --files (an interrupted run's seeds), timing nothing")
    parser.add_argument("--repeats", type=int, default=11, help="timing rounds")
    parser.add_argument("--calls", type=int, default=24, help="calls per file per round at batch 1 (batch 32: / 8)")
    parser.add_argument("--quick", action="store_true", help="size 32, 2 epochs, one seed, few repeats")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.epochs, args.shrink_epochs, args.seeds, args.repeats, args.calls = 32, 2, 2, [0], 3, 5

    import keras
    import tensorflow as tf
    from ai_edge_litert import __version__ as litert_version

    import keras_regkit as rk

    tf.get_logger().setLevel("ERROR")
    manifest_path = os.path.join(args.files, "manifest.json")
    if args.latency_only or args.report_only:
        manifest = read_json(manifest_path)
        if manifest is None:
            parser.error(f"--latency-only and --report-only read {manifest_path}: run without them first")
    else:
        os.makedirs(args.files, exist_ok=True)
        # Rows of other architectures and seeds (earlier runs) are kept.
        manifest = read_json(manifest_path) or {"settings": {}, "rows": []}
        manifest["versions"] = {"keras": keras.__version__, "tensorflow": tf.__version__,
                                "ai_edge_litert": litert_version}
        manifest["rows"] = [row for row in manifest["rows"]
                            if row["arch"] not in args.archs or row["seed"] not in args.seeds]
        inputs_path = os.path.join(args.files, "inputs.npz")
        inputs = dict(np.load(inputs_path)) if os.path.exists(inputs_path) else {}
        for arch in args.archs:
            manifest["settings"][arch] = {k: v for k, v in vars(args).items()
                                          if k not in ("latency_only", "out", "archs")}
            for seed in args.seeds:
                models, (x, _), test = make_models(keras, rk, arch, seed, args)
                rows = export_all(rk, models, x, test, args.files, f"{arch}_s{seed}", onnx=not args.no_onnx)
                manifest["rows"] += [dict(row, arch=arch, seed=seed) for row in rows]
                inputs[arch] = test[0][:32]
                np.savez(inputs_path, **inputs)
                with open(manifest_path, "w") as f:
                    json.dump(manifest, f, indent=1)  # what is done so far survives an interruption
    if args.latency_only:
        timing(rk, manifest, args.files, args)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f, indent=1)
    ratios(manifest["rows"])
    manifest["summary"] = summary(manifest["rows"])
    if args.out:
        write_json(args.out, manifest)
    return manifest


if __name__ == "__main__":
    main()
