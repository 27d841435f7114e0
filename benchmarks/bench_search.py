"""Does the two-stage strength search find a good strength, for fewer trials?

On scikit-learn's digits (the demo's split and 300-100 MLP, Adam 1e-3,
batch 64, at most 30 epochs with early stopping on the validation loss,
patience 5, one seed per trial), for one penalty (`--penalty`, ElasticNet
with equal L1 and L2 strengths by default: "use L1 and L2 together"):

1. `rk.search_strength` from 1e-6 to 1e-1: 6 decades + the reference, then
   5 log-spaced points in the best decade (4 new);
2. a plain 30-point log-spaced grid over the same range, plus the
   reference, through the same KerasTuner machinery and the same trial;
3. three final models, trained as a trial is: no penalty, Keras' default
   `keras.regularizers.L2(0.01)`, and the strength the search found; each
   is then shrunk in the tolerance mode (`rk.shrink(tolerance=0.01)`,
   10 epochs), which cuts as many weights to exact zeros as its guard allows.

Prints the number of trials and the wall time of both searches, their best
strengths, and for the three models the validation and test accuracy, and
the exact zeros of the kernels after the shrink (with the test accuracy
there). Writes the figures to `benchmarks/results/search_results.json` and the
regularization path to `docs/search_path.png`.

Usage (from the repository root, in the project venv with the `tune` and
`demo` extras):

    python benchmarks/bench_search.py          # ~10 min on 2 busy cores
    python benchmarks/bench_search.py --quick  # smoke run
    python benchmarks/bench_search.py --finals-only  # only the final models' rows again
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import common  # before Keras: this checkout's keras_regkit, TensorFlow quiet

import keras
import keras_tuner
import numpy as np

import keras_regkit as rk
from common.models import build_mlp, compile_model
from common.reporting import read_json, write_json
from keras_regkit import datasets
from keras_regkit.search.stages import best_row, completed_rows, grid_tuner
from keras_regkit.search.trial import Trainer

PENALTIES = {
    "elasticnet": lambda s: rk.regularizers.ElasticNet(l1=s, l2=s),
    "l1": rk.regularizers.L1,
    "l2": rk.regularizers.L2,
}


def build_model(units):
    def build():
        model = build_mlp(keras, 64, units)
        compile_model(keras, model)
        return model

    return build


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--penalty", choices=sorted(PENALTIES), default="elasticnet")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=common.result_path("search_results.json"))
    parser.add_argument("--finals-only", action="store_true",
                        help="only the three final models again, at the strength --out holds (the search is "
                             "left as it was): for a changed shrink")
    args = parser.parse_args(argv)
    quick = args.quick
    (x, y), (x_val, y_val), (x_test, y_test) = datasets.load("digits")
    units = (32,) if quick else (300, 100)
    epochs, low, high, fine, grid_points = (2, 1e-3, 1e-2, 2, 3) if quick else (30, 1e-6, 1e-1, 5, 30)
    build = build_model(units)
    penalty = PENALTIES[args.penalty]
    if args.finals_only:
        figures = read_json(args.out)
        figures["models"] = final_models(build, (x, y), (x_val, y_val), (x_test, y_test), penalty, figures["penalty"],
                                         figures["two_stage"]["best_strength"], epochs, quick)
        print_models(figures["models"])
        write_json(args.out, figures)
        return 0
    settings = dict(epochs=epochs, batch_size=64, patience=5)
    workdir = tempfile.mkdtemp(prefix="bench_search_")

    start = time.perf_counter()
    result = rk.search_strength(build, x, y, validation_data=(x_val, y_val), penalty=penalty, low=low,
                                high=high, fine=fine, directory=os.path.join(workdir, "two_stage"), **settings)
    two_stage_s = time.perf_counter() - start
    print(result)

    # The plain grid: the same trial, the same KerasTuner grid search, 30 points.
    trainer = Trainer(build, x, y, (x_val, y_val), penalty, "*", "kernel", settings["epochs"],
                      settings["batch_size"], settings["patience"], [], None, 1e-3, 0)
    trainer.check(low)
    trainer.objective = keras_tuner.Objective("val_loss", "min")
    strengths = [0.0, *(float(f"{s:.4g}") for s in np.geomspace(low, high, grid_points))]
    start = time.perf_counter()
    tuner = grid_tuner(keras_tuner, trainer, trainer.objective, strengths, os.path.join(workdir, "grid"), "grid",
                       True)
    tuner.search(verbose=0)
    grid_s = time.perf_counter() - start
    grid_rows = completed_rows(tuner, "grid")
    grid_best = best_row([r for r in grid_rows if r["strength"] > 0], trainer.objective)

    models = final_models(build, (x, y), (x_val, y_val), (x_test, y_test), penalty, args.penalty,
                          result.best_strength, epochs, quick)
    print(f"\ntwo-stage search: {len(result.rows)} trials, {two_stage_s:.0f} s, best {result.best_strength:.3g}")
    print(f"plain grid:       {len(grid_rows)} trials, {grid_s:.0f} s, best {grid_best['strength']:.3g} "
          f"(val_loss {grid_best['val_loss']:.4f} vs {result.best['val_loss']:.4f})")
    print_models(models)
    figures = {
        "backend": keras.backend.backend(), "penalty": args.penalty, "quick": quick,
        "two_stage": {"trials": len(result.rows), "seconds": two_stage_s, **result.to_dict()},
        "grid": {"trials": len(grid_rows), "seconds": grid_s, "best_strength": grid_best["strength"],
                 "best_val_loss": grid_best["val_loss"], "rows": sorted(grid_rows, key=lambda r: r["strength"])},
        "models": models,
    }
    if not quick:
        write_json(args.out, figures)
        result.plot(os.path.join(common.ROOT, "docs", "search_path.png"))


def final_models(build, train, validation, test, penalty, penalty_name, strength, epochs, quick):
    """The three final models, trained as a trial is, each then shrunk in
    the tolerance mode: name -> accuracies and zeros."""
    (x, y), (x_val, y_val), (x_test, y_test) = train, validation, test
    finals = {"no penalty": None, "keras L2(0.01)": keras.regularizers.L2(0.01),
              f"found {penalty_name}({strength:.3g})": penalty(strength)}
    models = {}
    for name, regularizer in finals.items():
        keras.utils.set_random_seed(0)
        model = build()
        attached = rk.apply_regularizers(model, {"*": regularizer}) if regularizer is not None else None
        model.fit(x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=64, verbose=0,
                  callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=5, restore_best_weights=True)])
        if attached is not None:
            attached.undo()  # the shrink works on the data loss, as for every model here
        row = {"val_accuracy": accuracy(model, x_val, y_val), "test_accuracy": accuracy(model, x_test, y_test),
               "near_zero_before_shrink": rk.sparsity_report(model).total.near_zero_fraction}
        rk.shrink(model, x, y, tolerance=0.01, validation_data=(x_val, y_val), epochs=2 if quick else 10,
                  batch_size=64)
        row.update(zeros_after_shrink=rk.sparsity_report(model).total.sparsity,
                   test_accuracy_after_shrink=accuracy(model, x_test, y_test))
        models[name] = row
    return models


def print_models(models):
    print(f"\n{'model':<28} {'val acc':>8} {'test acc':>9} {'|w|<=1e-3':>10} {'zeros after shrink':>19} "
          f"{'test acc after':>15}")
    for name, row in models.items():
        print(f"{name:<28} {row['val_accuracy']:8.3f} {row['test_accuracy']:9.3f} "
              f"{row['near_zero_before_shrink']:10.1%} {row['zeros_after_shrink']:19.1%} "
              f"{row['test_accuracy_after_shrink']:15.3f}")


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1) == y))


if __name__ == "__main__":
    main()
