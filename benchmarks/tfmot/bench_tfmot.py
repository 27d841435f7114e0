"""Comparison baseline: TF Model Optimization magnitude pruning on small MLPs.

Runs `tfmot.sparsity.keras.prune_low_magnitude` (gradual magnitude pruning,
PolynomialDecay schedule) on the same MLP / data protocol as keras_regkit's
quality benchmark, so the accuracy-vs-sparsity numbers of keras_regkit's
methods can be set against an established pruning tool.

tfmot only works with legacy Keras 2 (`tf_keras`), not with Keras 3, so this
script runs in its OWN virtual environment, separate from the project's
(which has Keras 3). This script sets TF_USE_LEGACY_KERAS=1 itself before
importing TensorFlow.

Create the venv (Python 3.11; versions that were verified together):

    python3.11 -m venv /work/venv-tfmot
    /work/venv-tfmot/bin/pip install --upgrade pip
    /work/venv-tfmot/bin/pip install "tensorflow==2.21.0" "tf_keras==2.21.0" \\
        "tensorflow-model-optimization==0.8.1" "scikit-learn==1.9.1" \\
        "mnist1d==0.0.2.post1"
    # same pins: pip install -r benchmarks/tfmot/requirements.txt

Run (from the repository root):

    TF_USE_LEGACY_KERAS=1 /work/venv-tfmot/bin/python benchmarks/tfmot/bench_tfmot.py
    TF_USE_LEGACY_KERAS=1 /work/venv-tfmot/bin/python benchmarks/tfmot/bench_tfmot.py --quick
    ... bench_tfmot.py --datasets digits --targets 0.9 0.95 --out /tmp/r.json

Full run: about 1 minute on 2 CPU cores (~52 s of training + ~10 s of
imports); --quick: about 45 s (mostly imports and tracing). Results are
bit-for-bit reproducible run to run on the same machine.

Protocol
--------
Data (no network needed):

- digits: sklearn `load_digits()`, x / 16 (float32, 64 features). Fixed
  80/20 train/test split with seed 0: `np.random.default_rng(0).permutation`
  of all 1797 samples, the first `n // 5` (359) are test, the rest (1438)
  train -- the same split as `keras_regkit.cli._load_digits`. Of the train
  part, the first `n_train // 10` (143) are held out as validation, leaving
  1295 for training.
- mnist1d: generated locally with `mnist1d.data.make_dataset(get_dataset_args())`
  (default args: 5000 samples, seed 42, 4000 train / 1000 test, 40 features);
  `get_dataset`/download is never called. Train is permuted with
  `default_rng(0)`, the first 10 % (400) held out as validation, 3600 train.
  Inputs are standardized with the scalar mean/std of the 3600 training
  samples (applied to train, validation and test).

Model: Input -> Dense(300, relu) -> Dense(100, relu) -> Dense(10) (logits);
Adam(1e-3), SparseCategoricalCrossentropy(from_logits=True), batch 64,
shuffled each epoch, `tf_keras.utils.set_random_seed(0)` and op determinism.

- Baseline: trained from scratch (digits 40 epochs, mnist1d 60 epochs).
- Pruning, per target sparsity in [0.80, 0.90, 0.95, 0.98]: clone the
  baseline model and copy its weights, wrap every Dense layer with
  `prune_low_magnitude` (kernels only; tfmot never prunes biases) with
  `PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0,
  end_step=E, frequency=F)` where S = steps per epoch = ceil(n_train / 64),
  F = max(1, S // 2), and E = round(0.7 * 10 * S / F) * F, i.e. 70 % of the
  10-epoch budget rounded to a multiple of F (tfmot only updates masks on
  steps where (step - begin_step) % F == 0, so an end_step off that grid
  would never reach the final sparsity). Fine-tune with a fresh Adam(1e-3)
  for exactly 10 epochs with `UpdatePruningStep()`, then `strip_pruning`.
- Reported: test accuracy (argmax of logits over the full test set), the
  measured fraction of exact zeros over all Dense kernels together (biases
  excluded), and the accuracy delta vs. the baseline in percentage points.
  The JSON also has per-layer zero fractions, validation accuracy, the
  schedule parameters, the package versions and timings.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TARGETS = [0.80, 0.90, 0.95, 0.98]
FINETUNE_EPOCHS = 10


# --------------------------------------------------------------------- data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quality_protocol import (  # noqa: E402  (the shared data/model protocol)
    BASELINE_EPOCHS,
    BATCH_SIZE,
    LOADERS,
    SEED,
    accuracy,
    compile_model,
    kernel_sparsity,
    train_baseline,
)


def run_dataset(name, args, tf, keras, tfmot):
    t0 = time.perf_counter()
    (x, y), (x_val, y_val), (x_test, y_test) = LOADERS[name]()
    t_data = time.perf_counter() - t0
    steps = math.ceil(len(x) / BATCH_SIZE)
    base_epochs = 3 if args.quick else BASELINE_EPOCHS[name]
    ft_epochs = 2 if args.quick else FINETUNE_EPOCHS
    print(
        f"\n[{name}] train {x.shape} val {x_val.shape} test {x_test.shape}, "
        f"{steps} steps/epoch (data {t_data:.1f}s)",
        flush=True,
    )

    base, t_base = train_baseline(keras, name, x, y, x_val, y_val, quick=args.quick)
    base_acc = accuracy(base, x_test, y_test)
    base_sp, base_layers = kernel_sparsity(keras, base)
    rows = [{
        "dataset": name, "method": "baseline", "target": None,
        "kernel_zero_frac": base_sp, "kernel_zero_frac_per_layer": base_layers,
        "test_acc": base_acc, "val_acc": accuracy(base, x_val, y_val),
        "delta_pp": 0.0, "epochs": base_epochs, "seconds": t_base,
    }]
    print(f"  baseline: test acc {base_acc:.4f} ({t_base:.1f}s)", flush=True)
    base_weights = base.get_weights()

    # Pruning fine-tunes.
    freq = max(1, steps // 2)
    end_step = max(freq, int(round(0.7 * ft_epochs * steps / freq)) * freq)
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,
    )

    for target in args.targets:
        keras.utils.set_random_seed(SEED)
        model = keras.models.clone_model(base)
        model.set_weights(base_weights)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(target),
            begin_step=0, end_step=end_step, frequency=freq,
        )
        pruned = tfmot.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=schedule
        )
        wrapped = [
            l for l in pruned.layers
            if isinstance(l, PruneLowMagnitude)
        ]
        n_dense = sum(isinstance(l, keras.layers.Dense) for l in model.layers)
        assert len(wrapped) == n_dense == 3, (len(wrapped), n_dense)
        compile_model(keras, pruned)
        t0 = time.perf_counter()
        pruned.fit(x, y, batch_size=BATCH_SIZE, epochs=ft_epochs, shuffle=True,
                   validation_data=(x_val, y_val), verbose=0,
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        t_ft = time.perf_counter() - t0
        final = tfmot.sparsity.keras.strip_pruning(pruned)
        acc = accuracy(final, x_test, y_test)
        sp, sp_layers = kernel_sparsity(keras, final)
        rows.append({
            "dataset": name, "method": "tfmot.prune_low_magnitude",
            "target": float(target), "kernel_zero_frac": sp,
            "kernel_zero_frac_per_layer": sp_layers, "test_acc": acc,
            "val_acc": accuracy(final, x_val, y_val),
            "delta_pp": 100.0 * (acc - base_acc), "epochs": ft_epochs,
            "schedule": {"type": "PolynomialDecay", "initial_sparsity": 0.0,
                         "final_sparsity": float(target), "begin_step": 0,
                         "end_step": end_step, "frequency": freq,
                         "steps_per_epoch": steps},
            "seconds": t_ft,
        })
        print(f"  target {target:.2f}: zeros {sp:.4f}, test acc {acc:.4f} "
              f"({t_ft:.1f}s)", flush=True)
    return rows


def format_table(rows):
    head = ["dataset", "method", "target", "kernel zeros", "test acc", "delta pp"]
    body = []
    for r in rows:
        body.append([
            r["dataset"], r["method"],
            "-" if r["target"] is None else f"{r['target']:.2f}",
            f"{r['kernel_zero_frac']:.4f}", f"{r['test_acc']:.4f}",
            f"{r['delta_pp']:+.2f}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(b) for b in body]
    return "\n".join(lines)


def versions(tf, keras, tfmot):
    import importlib.metadata as md

    def v(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": v("tf_keras"),
        "keras_used": keras.__name__ + " " + str(getattr(keras, "__version__", "")),
        "tensorflow-model-optimization": v("tensorflow-model-optimization"),
        "numpy": np.__version__,
        "scikit-learn": v("scikit-learn"),
        "mnist1d": v("mnist1d"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 baseline epochs, 2 fine-tune epochs")
    p.add_argument("--datasets", nargs="+", default=list(LOADERS),
                   choices=list(LOADERS))
    p.add_argument("--targets", nargs="+", type=float, default=TARGETS)
    p.add_argument("--out", default="benchmarks/tfmot/tfmot_results.json")
    args = p.parse_args(argv)

    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    tf.config.experimental.enable_op_determinism()
    t_start = time.perf_counter()
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, args, tf, keras, tfmot)
    total = time.perf_counter() - t_start

    print("\n" + format_table(rows))
    print(f"\ntotal {total:.1f}s")
    result = {
        "benchmark": "tfmot prune_low_magnitude baseline",
        "quick": args.quick,
        "versions": versions(tf, keras, tfmot),
        "protocol": {
            "model": "Dense(300,relu)-Dense(100,relu)-Dense(10) logits",
            "optimizer": "Adam(1e-3)", "batch_size": BATCH_SIZE, "seed": SEED,
            "baseline_epochs": {k: (3 if args.quick else v)
                                for k, v in BASELINE_EPOCHS.items()},
            "finetune_epochs": 2 if args.quick else FINETUNE_EPOCHS,
            "sparsity": "exact-zero fraction over all Dense kernels (no biases)",
        },
        "total_seconds": total,
        "results": rows,
    }
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
