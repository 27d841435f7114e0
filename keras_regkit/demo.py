"""The `keras-regkit demo`: the whole kit on real data that ships with pip
packages (no network). Trains one small MLP per method, watches its
sparsity, shrinks it, saves and reloads it, and compares the methods."""

from __future__ import annotations

import dataclasses
import gzip
import os
import tempfile

import keras
import numpy as np

import keras_regkit as rk
from keras_regkit import datasets


class DemoError(Exception):
    """A problem the user can fix (missing extra, bad dataset)."""


def load_dataset(name: str):
    """`(x_train, y_train), (x_val, y_val), (x_test, y_test)` (see
    `keras_regkit.datasets`), with what the user can fix as a `DemoError`."""
    try:
        return datasets.load(name)
    except (ImportError, ValueError) as error:
        raise DemoError(str(error)) from None


def methods(steps_per_epoch: int, epochs: int) -> dict:
    """The penalties compared: none, L2, proximal L1 (exact zeros during
    training, before any shrink) and a scheduled ExpAbs that is off for the
    first quarter of training, then ramps up over the next half."""
    ramp = rk.schedules.DelayedRamp(
        target=1e-4,
        delay_steps=steps_per_epoch * max(1, epochs // 4),
        ramp_steps=steps_per_epoch * max(1, epochs // 2),
    )
    return {
        "none": None,
        "L2": rk.regularizers.L2(1e-4),
        "L1 (proximal)": rk.regularizers.L1(PROXIMAL_L1, proximal=True),
        "ExpAbs (scheduled)": rk.regularizers.ExpAbs(ramp, scale=0.5),
    }


@dataclasses.dataclass
class MethodResult:
    name: str
    accuracy: float  # test accuracy after training
    trained_sparsity: float  # exact zeros in the kernels after training, before the shrink
    shrunk_accuracy: float  # test accuracy after the shrink
    sparsity: float  # exact zeros in the kernels after the shrink
    gzip_bytes: int  # gzip size of the saved .keras file (no optimizer state)
    dense_gzip_bytes: int  # the same before the shrink
    history: dict  # per-epoch logs: training, then shrink
    magnitudes: np.ndarray  # |w| of all kernels after the shrink


class _Progress(keras.callbacks.Callback):
    """One progress bar over every epoch of every method."""

    def __init__(self, bar, label):
        super().__init__()
        self.bar, self.label = bar, label

    def on_epoch_end(self, epoch, logs=None):
        self.bar.add(1, values=[("val_accuracy", logs.get("val_accuracy", 0.0))])


def deployable_copy(model: keras.Model) -> keras.Model:
    """An uncompiled copy with the same weights: saved, it holds no optimizer
    state. (`keras.models.clone_model` compiles its clone with the original's
    optimizer, whose slots would then be saved too.)"""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _saved_size(model, path) -> int:
    """gzip size of the model as deployed (saved without optimizer state),
    so the figure is about the weights."""
    deployable_copy(model).save(path)
    with open(path, "rb") as f:
        return len(gzip.compress(f.read()))


# Proximal L1's strength: on digits with Adam(1e-3), 40 epochs, it leaves
# about 40 % of the kernels' entries exactly zero, at about a point of test
# accuracy (benchmarks/bench_proximal.py; 1e-3 gives 84 % at -2.6 points).
PROXIMAL_L1 = 1e-4

# The demo's shrink target: 95 % of the kernels' entries, which the README's
# benchmark reaches on digits within a point of test accuracy.
SHRINK_SPARSITY = 0.95


def run(dataset="digits", epochs=30, shrink_epochs=10, verbose=1, workdir=None):
    """Runs the demo; returns a list of `MethodResult`."""
    if workdir is None:
        # The saved files only measure sizes and check the reload: none to keep.
        with tempfile.TemporaryDirectory(prefix="keras_regkit_demo_") as workdir:
            return run(dataset, epochs, shrink_epochs, verbose, workdir)
    (x, y), (x_val, y_val), (x_test, y_test) = load_dataset(dataset)
    batch_size = 64
    # JAX moves schedules once per epoch (see RegularizationScheduler), so
    # there the schedule counts epochs.
    update_freq = "epoch" if keras.backend.backend() == "jax" else "batch"
    steps_per_epoch = int(np.ceil(len(x) / batch_size)) if update_freq == "batch" else 1
    chosen = methods(steps_per_epoch, epochs)
    bar = keras.utils.Progbar(
        len(chosen) * (epochs + shrink_epochs), verbose=verbose, unit_name="epoch",
        stateful_metrics=["val_accuracy"],
    )
    results = []
    for name, regularizer in chosen.items():
        keras.utils.set_random_seed(0)
        model = datasets.mlp(keras, x.shape[1])
        if regularizer is not None:
            rk.apply_regularizers(model, {"*": regularizer})
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        monitor = rk.callbacks.SparsityMonitor(per_layer=False)
        # Only a scheduled penalty needs the scheduler, and only a proximal one
        # the proximal update (each warns where it has nothing to do).
        scheduler = [rk.callbacks.RegularizationScheduler(update_freq)] if getattr(
            regularizer, "is_scheduled", False) else []
        if getattr(regularizer, "proximal", False):
            scheduler.append(rk.callbacks.ProximalUpdate())
        history = model.fit(
            x, y, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=0,
            callbacks=[*scheduler, monitor, _Progress(bar, name)],
        )
        accuracy = _accuracy(model, x_test, y_test)
        trained_sparsity = rk.sparsity_report(model).total.sparsity
        dense_size = _saved_size(model, os.path.join(workdir, f"{_slug(name)}_dense.keras"))

        shrink_log = keras.callbacks.History()
        rk.shrink(
            model, x, y, sparsity=SHRINK_SPARSITY, validation_data=(x_val, y_val), epochs=shrink_epochs,
            batch_size=batch_size,
            callbacks=[rk.callbacks.SparsityMonitor(per_layer=False), _Progress(bar, name), shrink_log],
        )
        path = os.path.join(workdir, f"{_slug(name)}.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        predictions = _predict(model, x_test)
        if not np.array_equal(predictions, _predict(reloaded, x_test)):
            raise AssertionError(f"{name}: the reloaded model predicts differently")
        merged = {k: history.history.get(k, []) + shrink_log.history.get(k, []) for k in ("val_accuracy", "sparsity", "near_zero")}
        results.append(MethodResult(
            name=name,
            accuracy=accuracy,
            trained_sparsity=trained_sparsity,
            shrunk_accuracy=float(np.mean(np.argmax(predictions, axis=-1) == y_test)),
            sparsity=rk.sparsity_report(reloaded).total.sparsity,
            gzip_bytes=_saved_size(reloaded, os.path.join(workdir, f"{_slug(name)}_deploy.keras")),
            dense_gzip_bytes=dense_size,
            history=merged,
            magnitudes=np.concatenate([np.abs(r.variable.numpy()).ravel() for r in rk.iter_weights(reloaded)]),
        ))
    return results


def table(results, epochs) -> str:
    header = (f"{'method':<20} {'test acc':>9} {'zeros':>7} {'after shrink':>13} {'exact zeros':>12} "
              f"{'gzip .keras':>12} {'(before)':>9}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<20} {r.accuracy:9.3f} {r.trained_sparsity:7.1%} {r.shrunk_accuracy:13.3f} {r.sparsity:12.1%} "
            f"{r.gzip_bytes / 1024:10.0f}KB {r.dense_gzip_bytes / 1024:7.0f}KB"
        )
    lines.append(f"(trained {epochs} epochs: 'zeros' are the kernels' exact zeros then; then shrunk; "
                 "predictions of each reloaded file checked identical)")
    return "\n".join(lines)


def plot(results, epochs, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DemoError("--plot needs matplotlib: pip install 'keras_regkit[demo]'") from None
    figure, (acc_axis, sparsity_axis, hist_axis) = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        acc_axis.plot(r.history["val_accuracy"], label=r.name)
        sparsity_axis.plot(r.history["sparsity"], label=r.name)
        nonzero = r.magnitudes[r.magnitudes > 0]
        hist_axis.hist(np.log10(nonzero), bins=60, histtype="step", label=f"{r.name} ({r.sparsity:.0%} zeros)")
    for axis in (acc_axis, sparsity_axis):
        axis.axvline(epochs - 0.5, color="gray", linestyle=":")
        axis.set_xlabel("epoch (dotted: shrink starts)")
    acc_axis.set_ylabel("validation accuracy")
    sparsity_axis.set_ylabel("exact-zero fraction of kernels")
    hist_axis.set_xlabel("log10 |w| of the non-zero kernel weights after the shrink")
    for axis in (acc_axis, sparsity_axis, hist_axis):
        axis.legend(fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=90)
    except OSError as error:
        raise DemoError(f"cannot write plot {path!r}: {error}") from None


def _predict(model, x) -> np.ndarray:
    # A direct call, not `predict`: nothing to trace, which is most of the
    # cost on data this small.
    return keras.ops.convert_to_numpy(model(x, training=False))


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(_predict(model, x), axis=-1) == y))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
