"""Strength search: one trial per decade, then a fine grid inside the best
decade, on KerasTuner (its tuner, oracle, trial storage, resume and
distributed mode; nothing of our own)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import warnings
from typing import Callable, Mapping, Sequence, Union

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit.attach import apply_regularizers, total_penalty
from keras_regkit.proximal import bind_proximal
from keras_regkit.regularizers import ElasticNet
from keras_regkit.shrinking import shrink
from keras_regkit.shrinking.data import is_infinite
from keras_regkit.stats import sparsity_report
from keras_regkit.weights import LayerSelector

# Columns every trial records besides the validation metrics; the objective
# may be any of them too (e.g. `keras_tuner.Objective("zeros", "max")`).
_EXTRA = ("penalty", "zeros", "near_zero", "epochs")


def _default_penalty(strength: float) -> keras.regularizers.Regularizer:
    return ElasticNet(l1=strength, l2=strength)


@dataclasses.dataclass(frozen=True)
class StrengthSearchResult:
    """What `search_strength` found: one row per finished trial.

    Attributes:
        best_strength: The regularized strength with the best objective.
        objective: The objective's name (e.g. `"val_loss"`).
        direction: `"min"` or `"max"`.
        rows: One dict per trial, sorted by strength: `strength`, `stage`
            (`"reference"`, `"decade"` or `"fine"`), then every recorded
            metric (`val_*`, `penalty`, `zeros`, `near_zero`, `epochs`, and
            `shrunk_*` when the search shrinks).

    Example:

    >>> result = rk.search.StrengthSearchResult(1e-3, "val_loss", "min", [
    ...     {"strength": 0.0, "stage": "reference", "val_loss": 0.5},
    ...     {"strength": 1e-3, "stage": "decade", "val_loss": 0.4}])
    >>> result.best["val_loss"], result.reference["val_loss"]
    (0.4, 0.5)
    """

    best_strength: float
    objective: str
    direction: str
    rows: list

    @property
    def best(self) -> dict:
        """The row of `best_strength`."""
        return next(r for r in self.rows if r["strength"] == self.best_strength and r["stage"] != "reference")

    @property
    def reference(self) -> dict | None:
        """The unregularized model's row."""
        return next((r for r in self.rows if r["stage"] == "reference"), None)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"best_strength": self.best_strength, "objective": self.objective,
                "direction": self.direction, "rows": [dict(r) for r in self.rows]}

    def _columns(self) -> list[str]:
        metrics = [k for k in self.rows[0] if k not in ("strength", "stage", *_EXTRA)]
        metrics.sort(key=lambda k: (k != self.objective, k.startswith("shrunk_"), k))
        return metrics + ["penalty", "zeros", "near_zero", "epochs"]

    def __str__(self) -> str:
        columns = self._columns()
        header = ["strength", "stage", *columns]
        lines = []
        for r in self.rows:
            cells = [f"{r['strength']:.3g}", r["stage"]]
            for c in columns:
                value = r.get(c, float("nan"))
                cells.append(f"{value:.1%}" if c in ("zeros", "near_zero", "shrunk_zeros") else
                             f"{int(value)}" if c == "epochs" else f"{value:.4g}")
            mark = " <- best" if r["stage"] != "reference" and r["strength"] == self.best_strength else ""
            lines.append((cells, mark))
        widths = [max(len(x) for x in [h, *(cells[i] for cells, _ in lines)]) for i, h in enumerate(header)]
        out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
        out.append("-" * len(out[0]))
        out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) + mark for cells, mark in lines]
        reference = self.reference
        if reference is not None and _better(reference[self.objective], self.best[self.objective], self.direction):
            out.append(f"(no strength beats the unregularized reference on {self.objective})")
        return "\n".join(out)

    def plot(self, path: str) -> None:
        """Writes the regularization path to `path` (PNG, SVG, ... by the
        suffix): the objective and the kernels' zero fractions against the
        strength on a log scale, the reference dashed, the choice marked.

        Raises:
            ImportError: Without matplotlib.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("StrengthSearchResult.plot needs matplotlib: pip install matplotlib") from None
        rows = [r for r in self.rows if r["stage"] != "reference"]
        strengths = [r["strength"] for r in rows]
        figure, metric_axis = plt.subplots(figsize=(7, 4))
        metric_axis.plot(strengths, [r[self.objective] for r in rows], "o-", color="C0", label=self.objective)
        if self.reference is not None:
            metric_axis.axhline(self.reference[self.objective], color="C0", linestyle="--",
                                label=f"{self.objective}, no penalty")
        metric_axis.axvline(self.best_strength, color="gray", linestyle=":", label=f"chosen {self.best_strength:.3g}")
        metric_axis.set_xscale("log")
        metric_axis.set_xlabel("strength")
        metric_axis.set_ylabel(self.objective)
        sparsity_axis = metric_axis.twinx()
        for key, color in (("near_zero", "C1"), ("zeros", "C2"), ("shrunk_zeros", "C3")):
            if key in rows[0]:
                sparsity_axis.plot(strengths, [r[key] for r in rows], "s-", color=color, markersize=3,
                                   label=f"{key} (kernels)")
        sparsity_axis.set_ylabel("fraction of kernel entries")
        sparsity_axis.set_ylim(-0.02, 1.02)
        handles = metric_axis.get_legend_handles_labels()
        more = sparsity_axis.get_legend_handles_labels()
        metric_axis.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "min" else a > b


def decades(low: float, high: float) -> list[float]:
    """`low, 10·low, 100·low, ...` up to `high` (inclusive)."""
    count = int(math.floor(math.log10(high / low) + 1e-9)) + 1
    return [float(f"{low * 10.0**i:.6g}") for i in range(count)]


def fine_grid(center: float, points: int) -> list[float]:
    """`points` log-spaced values splitting the decade centred on `center`
    (from `center / sqrt(10)` to `center * sqrt(10)`) into equal parts."""
    return [float(f"{center * 10.0 ** ((j + 0.5) / points - 0.5):.6g}") for j in range(points)]


def search_strength(
    build_model: Callable[[], keras.Model],
    x,
    y=None,
    *,
    validation_data=None,
    penalty: Callable[[float], keras.regularizers.Regularizer] | None = None,
    layers: LayerSelector = "*",
    weights: Union[str, Sequence[str]] = "kernel",
    low: float = 1e-6,
    high: float = 1e-1,
    fine: int = 5,
    objective="val_loss",
    epochs: int = 20,
    batch_size: int | None = None,
    patience: int | None = 3,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    shrink: Mapping | None = None,
    threshold: float = 1e-3,
    seed: int = 0,
    directory: str | None = None,
    project_name: str = "strength_search",
    overwrite: bool = False,
    verbose: int = 0,
) -> StrengthSearchResult | None:
    """Finds a penalty strength: decades first, then a fine grid.

    Stage 1 trains one model per decade, `low, 10·low, ...` up to `high`,
    plus the unregularized model as the reference. Stage 2 trains `fine`
    log-spaced strengths splitting the decade centred on the best stage-1
    strength (values already trained are not trained again; at an end of
    the range this reaches half a decade beyond it). Every trial
    builds a fresh model from the same seed, attaches `penalty(strength)` to
    the selected weights (so `build_model` needs no change), trains it with
    early stopping, then takes off the penalty and evaluates it, so `val_loss`
    is the data loss alone and strengths compare fairly. (Keras' own
    `val_loss` in the training logs includes the penalty.)

    The search is two `keras_tuner.GridSearch` runs, `project_name` and
    `project_name + "_fine"` under `directory`, so KerasTuner keeps every
    trial there: calling again with the same arguments and `directory`
    resumes an interrupted search without re-running finished trials
    (`overwrite=True` starts over).

    More than one machine: KerasTuner's distributed mode. Run the same
    script on every machine with `KERASTUNER_ORACLE_IP` and
    `KERASTUNER_ORACLE_PORT` set to the chief's address, and
    `KERASTUNER_TUNER_ID` set to `"chief"` on the one that serves the
    oracle and to a unique name (`"tuner0"`, `"tuner1"`, ...) on each worker.
    The workers run the trials; the chief runs none and returns the result;
    workers return `None`. Stage 2 is served on the next port
    (`KERASTUNER_ORACLE_PORT + 1`), so open both.

    Args:
        build_model: A function of no argument that returns a new compiled
            model. Called once per trial, after `keras.utils.set_random_seed`.
        x, y: Training data, as for `fit`.
        validation_data: `(x_val, y_val)` or a dataset. Required: the
            objective is measured on it.
        penalty: A factory `strength -> regularizer`, e.g.
            `rk.regularizers.L1`, `lambda s: rk.regularizers.ElasticNet(s, s / 10)`
            or `rk.regularizers.GroupLasso`. Defaults to ElasticNet with equal
            L1 and L2 strengths: L1 and L2 together. A proximal penalty
            (`lambda s: rk.regularizers.L1(s, proximal=True)`) is bound to
            each trial's optimizer, so the path shows its exact zeros.
        layers: Layer selector, as in `apply_regularizers`. Defaults to all.
        weights: Weight kinds that get the penalty. Defaults to `"kernel"`
            (biases spared).
        low, high: The range of stage 1, floats > 0. Defaults to 1e-6, 1e-1.
        fine: Number of stage-2 strengths (>= 1). Defaults to 5.
        objective: A name the trial records, or a `keras_tuner.Objective`:
            `"val_<metric>"` for the model's compiled metrics (data loss
            `"val_loss"` by default), `"shrunk_val_<metric>"` with `shrink`,
            or `"zeros"`, `"near_zero"`, `"penalty"` with a direction.
        epochs: Most epochs per trial. Defaults to 20.
        batch_size: Passed to `fit`.
        patience: `keras.callbacks.EarlyStopping` patience on the objective
            (on Keras' `val_loss` where the objective is not in the training
            logs), best weights restored; `None` trains all `epochs` and
            validates once, at the end.
        callbacks: Your callbacks, passed to every trial's `fit`.
        shrink: If given, a dict of `rk.shrink` arguments (e.g.
            `{"sparsity": 0.9, "epochs": 3}`): every trial is shrunk after
            training and records `shrunk_val_*` and `shrunk_zeros`.
        threshold: `|w| <= threshold` counts as near zero. Defaults to 1e-3.
        seed: Seed of every trial's initial weights and data order.
        directory: Where KerasTuner keeps the search. Defaults to a new
            temporary directory, removed when the search ends (no resume),
            unless every trial failed: the error then names it.
        project_name: KerasTuner's project name for stage 1.
        overwrite: Discard a previous search in `directory`.
        verbose: 0 quiet, 1 KerasTuner's per-trial summary.

    Returns:
        A `StrengthSearchResult` (`None` on a distributed-mode worker).

    Raises:
        ImportError: Without keras-tuner.
        TypeError, ValueError: Before the first trial, for a bad range, a
            factory that returns no regularizer, a selector that matches
            no weight, an objective the trials do not record, a model that is
            not compiled, missing validation data, a `directory` that is a
            file, or `shrink` arguments that `rk.shrink` refuses for the
            model (checked with a one-step shrink).
        RuntimeError: If every regularized stage-1 trial failed, or more
            trials in a row than KerasTuner allows (3).

    Warns:
        UserWarning: When some trials fail (e.g. a `penalty` factory that
            raises for some strengths): they are left out of the result, and
            the warning names their strengths and the last error.
        UserWarning: Once, before the first trial, when the per-feature
            standard deviations of the numeric training inputs differ by more
            than 100×: one strength then means very different things per
            input; standardise them.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 8)).astype("float32")
    >>> y = x[:, :1] + 0.1 * rng.normal(size=(64, 1)).astype("float32")
    >>> def build():
    ...     model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    ...     model.compile(keras.optimizers.Adam(0.05), "mse")
    ...     return model
    >>> result = rk.search_strength(build, x[:48], y[:48], validation_data=(x[48:], y[48:]),
    ...     penalty=rk.regularizers.L1, low=1e-2, high=1e-2, fine=2, epochs=1, patience=None)
    >>> [(row["strength"], row["stage"]) for row in result.rows]
    [(0.0, 'reference'), (0.00562341, 'fine'), (0.01, 'decade'), (0.0177828, 'fine')]
    >>> print(str(result).splitlines()[0])
    strength      stage  val_loss  penalty  zeros  near_zero  epochs

    References:
        Friedman, Hastie & Tibshirani, "Regularization paths for generalized
        linear models via coordinate descent", JSS 2010 (the path plot).
    """
    kt = _import_keras_tuner()
    low = _validate.strength("low", low)
    high = _validate.strength("high", high)
    if low <= 0 or high < low:
        raise ValueError(
            "Invalid range for arguments `low`, `high`: expected 0 < low <= high. "
            f"Received: low={low}, high={high}"
        )
    fine = _validate.integer("fine", fine, minimum=1)
    epochs = _validate.integer("epochs", epochs, minimum=1)
    overwrite = _validate.boolean("overwrite", overwrite)
    verbose = _validate.integer("verbose", verbose)
    if batch_size is not None:
        batch_size = _validate.integer("batch_size", batch_size, minimum=1)
    if not callable(build_model):
        raise TypeError("Invalid value for argument `build_model`: expected a function that returns a new "
                        f"compiled model. Received: build_model={build_model!r}")
    if penalty is not None and not callable(penalty):
        raise TypeError("Invalid value for argument `penalty`: expected a factory `strength -> regularizer`, "
                        f"e.g. rk.regularizers.L1. Received: penalty={penalty!r}")
    if not isinstance(callbacks, (list, tuple)) or not all(
        isinstance(c, keras.callbacks.Callback) for c in callbacks
    ):
        raise TypeError("Invalid value for argument `callbacks`: expected a list of keras.callbacks.Callback. "
                        f"Received: callbacks={callbacks!r}")
    for name, value in (("directory", directory), ("project_name", project_name)):
        if not (value is None and name == "directory") and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"Invalid value for argument `{name}`: expected a str path. Received: {name}={value!r}")
    if directory:
        directory = _directory(directory)
    if patience is not None:
        patience = _validate.integer("patience", patience, minimum=0)
    if validation_data is None:
        raise ValueError("search_strength() needs `validation_data=(x_val, y_val)` (or a dataset): "
                         "the objective is measured on it. Received: validation_data=None")
    for name, data in (("x", x), ("validation_data", validation_data)):
        if is_infinite(data):
            # Trials take no `steps_per_epoch`: fit and evaluate would never end.
            raise ValueError(f"Invalid value for argument `{name}`: this dataset repeats forever, and every "
                             "trial reads it to the end. Pass a finite dataset (without `.repeat()`, or "
                             "`.take(n)` batches).")
    if shrink is not None and not isinstance(shrink, Mapping):
        raise TypeError("Invalid value for argument `shrink`: expected None or a dict of rk.shrink "
                        f"arguments, e.g. {{'sparsity': 0.9, 'epochs': 3}}. Received: shrink={shrink!r}")
    penalty = penalty or _default_penalty
    trainer = _Trainer(build_model, x, y, validation_data, penalty, layers, weights, epochs, batch_size,
                       patience, list(callbacks), dict(shrink) if shrink else None, threshold, seed)
    recorded = trainer.check(low)  # builds one model: every bad argument fails here
    objective = kt.src.engine.objective.create_objective(objective)
    if not isinstance(objective, kt.Objective) or objective.name not in recorded:
        raise ValueError(
            f"Invalid value for argument `objective`: {getattr(objective, 'name', objective)!r} is "
            f"not recorded by the trials. Valid: {sorted(recorded)}"
        )
    trainer.objective = objective
    _warn_if_unstandardised(x)

    stages = (kt, trainer, objective, low, high, fine, project_name, overwrite, verbose)
    if directory:
        return _run_stages(*stages, directory)
    # A folder nobody named cannot be resumed from: it goes when the search
    # ends, unless every trial failed (the error names it).
    directory = tempfile.mkdtemp(prefix="keras_regkit_search_")
    keep = False
    try:
        return _run_stages(*stages, directory)
    except RuntimeError:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def _directory(directory) -> str:
    """`directory`, created if it is missing: a path KerasTuner could not use
    (a file, a folder below a file, no permission) fails here, before the
    first trial."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            "Invalid value for argument `directory`: it names a file, and KerasTuner keeps the "
            f"search in a folder. Pass a folder's path (new or existing). Received: directory={directory!r}"
        )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"Invalid value for argument `directory`: cannot create the folder ({error.strerror}). "
            f"Pass a folder's path that can be written. Received: directory={directory!r}"
        ) from None
    return directory


def _run_stages(kt, trainer, objective, low, high, fine, project_name, overwrite, verbose, directory):
    """Stage 1 (the decades), then stage 2 (the fine grid in the best one);
    None on a KerasTuner worker."""
    stage1 = [0.0, *decades(low, high)]
    tuner = _tuner(kt, trainer, objective, stage1, directory, project_name, overwrite)
    tuner.search(verbose=verbose)
    if _is_worker():
        # The chief's oracle holds the trials and picks the fine values; a
        # worker's own list here is a placeholder it never uses.
        with _stage_two_port():
            tuner = _tuner(kt, trainer, objective, [low], directory, f"{project_name}_fine", overwrite)
            tuner.search(verbose=verbose)
        return None
    rows = _rows(tuner, "decade")
    regularized = [r for r in rows if r["strength"] > 0]
    if not regularized:
        raise RuntimeError(f"Every stage-1 trial failed; KerasTuner's record is in {directory!r}:\n"
                           f"{_failure(tuner)}")
    center = _best(regularized, objective)["strength"]
    tried = {r["strength"] for r in rows}
    stage2 = [s for s in fine_grid(center, fine) if not any(math.isclose(s, t, rel_tol=1e-6) for t in tried)]
    if stage2:
        with _stage_two_port():
            fine_tuner = _tuner(kt, trainer, objective, stage2, directory, f"{project_name}_fine", overwrite)
            fine_tuner.search(verbose=verbose)
        rows += _rows(fine_tuner, "fine")
    rows.sort(key=lambda r: r["strength"])
    best = _best([r for r in rows if r["strength"] > 0], objective)
    return StrengthSearchResult(best["strength"], objective.name, objective.direction, rows)


def _import_keras_tuner():
    try:
        import keras_tuner
        import keras_tuner.src.engine.objective  # noqa: F401  (create_objective)
    except ImportError:
        raise ImportError(
            "search_strength needs KerasTuner: pip install 'keras_regkit[tune]'"
        ) from None
    return keras_tuner


def _is_worker() -> bool:
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and "KERASTUNER_ORACLE_IP" in os.environ


@contextlib.contextmanager
def _stage_two_port():
    """In KerasTuner's distributed mode, stage 2 is served on the next port:
    a worker that finished stage 1 then waits for the chief's stage-2 oracle
    instead of reaching the stage-1 one, which may still be answering."""
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if port is None:
        yield
        return
    os.environ["KERASTUNER_ORACLE_PORT"] = str(int(port) + 1)
    try:
        yield
    finally:
        os.environ["KERASTUNER_ORACLE_PORT"] = port


def _tuner(kt, trainer, objective, strengths, directory, project_name, overwrite):
    hp = kt.HyperParameters()
    hp.Choice("strength", strengths)

    # KerasTuner's own grid search; only what a trial is (train, measure) is ours.
    class _StrengthGrid(kt.GridSearch):
        def run_trial(self, trial, *args, **kwargs):
            return trainer.run(trial.hyperparameters.get("strength"))

    return _StrengthGrid(
        objective=objective, max_trials=len(strengths), hyperparameters=hp, tune_new_entries=False,
        directory=directory, project_name=project_name, overwrite=overwrite,
    )


def _rows(tuner, stage: str) -> list[dict]:
    """One row per completed trial. A failed trial (a factory or a shrink
    that raised) records no metrics: it is left out, with a warning that
    names its strength and its error."""
    rows, failed = [], []
    # The oracle's public view of finished trials; it is the same through
    # KerasTuner's distributed client.
    for trial in tuner.oracle.get_best_trials(num_trials=10**6):
        if trial.status != "COMPLETED":
            failed.append(trial)
            continue
        row = {"strength": float(trial.hyperparameters.get("strength"))}
        row["stage"] = "reference" if row["strength"] == 0 else stage
        for name in trial.metrics.metrics:
            row[name] = float(trial.metrics.get_last_value(name))
        rows.append(row)
    if failed:
        strengths = sorted(float(t.hyperparameters.get("strength")) for t in failed)
        warnings.warn(
            f"search_strength: {len(failed)} {stage} trial(s) failed and are left out of the result, "
            f"at strengths {strengths}. The last error: {_last_line(failed[-1].message)}",
            UserWarning,
            stacklevel=4,
        )
    return rows


def _last_line(message) -> str:
    """The exception line of a trial's traceback text."""
    lines = [line for line in str(message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no trial message)"


def _failure(tuner) -> str:
    messages = [t.message for t in tuner.oracle.trials.values() if getattr(t, "message", None)]
    return messages[-1] if messages else "(no trial message)"


def _best(rows: list[dict], objective) -> dict:
    sign = 1.0 if objective.direction == "min" else -1.0
    # A NaN objective (a strength that diverged) never wins.
    return min(rows, key=lambda r: (math.isnan(r[objective.name]), sign * r[objective.name], r["strength"]))


def _warn_if_unstandardised(x, limit: float = 100.0) -> None:
    arrays = [a for a in keras.tree.flatten(x) if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.ndim >= 2]
    stds = np.concatenate([a.reshape(len(a), -1).std(axis=0) for a in arrays]) if arrays else np.zeros(0)
    stds = stds[stds > 0]  # a constant input gets no weight worth penalising
    if stds.size > 1 and stds.max() > limit * stds.min():
        warnings.warn(
            f"The training inputs' per-feature standard deviations range from {stds.min():.3g} to "
            f"{stds.max():.3g} ({stds.max() / stds.min():.0f}x): one penalty strength means very "
            "different things for such inputs. Standardise them (e.g. keras.layers.Normalization, "
            "or (x - mean) / std) before searching.",
            UserWarning,
            stacklevel=3,
        )


# `rk.shrink` arguments that every trial sets itself.
_GIVEN_TO_SHRINK = ("model", "x", "y", "validation_data")


class _Trainer:
    """One trial: build, attach, fit with early stopping, measure."""

    def __init__(self, build_model, x, y, validation_data, penalty, layers, weights, epochs, batch_size,
                 patience, callbacks, shrink, threshold, seed):
        self.build_model, self.x, self.y = build_model, x, y
        self.validation_data = validation_data
        self.penalty, self.layers, self.weights = penalty, layers, weights
        self.epochs, self.batch_size, self.patience = epochs, batch_size, patience
        self.callbacks, self.shrink = callbacks, shrink
        self.threshold = _validate.real("threshold", threshold)
        self.seed = _validate.integer("seed", seed)
        self.objective = None

    def _penalty(self, strength: float):
        regularizer = self.penalty(strength)
        if not isinstance(regularizer, keras.regularizers.Regularizer):
            raise TypeError(
                "Invalid value for argument `penalty`: expected a factory `strength -> "
                f"keras.regularizers.Regularizer`, e.g. rk.regularizers.L1. penalty({strength}) "
                f"returned {regularizer!r}"
            )
        return regularizer

    def _model(self):
        keras.utils.set_random_seed(self.seed)
        model = self.build_model()
        if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
            raise ValueError(
                "Invalid value for argument `build_model`: expected a function that returns a compiled "
                f"keras.Model. Received a function that returned {type(model).__name__}"
                + ("" if not isinstance(model, keras.Model) else " without an optimizer (call compile)")
            )
        return model

    def _attach(self, model, strength):
        with warnings.catch_warnings():
            # A trial's model is never saved: whether its penalty's class
            # would reload does not matter here.
            warnings.filterwarnings("ignore", message=r"apply_regularizers: .* is not registered with Keras")
            attached = apply_regularizers(model, {self.layers: self._penalty(strength)}, self.weights)
        # A proximal penalty acts only once bound to the optimizer: every
        # trial binds it, so the path shows its exact zeros.
        bind_proximal(model)
        return attached

    def check(self, strength: float) -> set[str]:
        """Everything a trial would trip on, with one model and one batch;
        returns the names a trial records."""
        model = self._model()
        self._attach(model, strength)
        sparsity_report(model, self.weights, self.threshold)
        logs = self._evaluate(model, steps=1)
        recorded = {*logs, *_EXTRA}
        if self.shrink is not None:
            self._check_shrink(model)
            recorded |= {f"shrunk_{k}" for k in logs} | {"shrunk_zeros"}
        return recorded

    def _check_shrink(self, model) -> None:
        """Shrinks `model` for one step with the trials' `rk.shrink`
        arguments, so that whatever `shrink` refuses (a bad argument, or one
        this model cannot take, as the tolerance mode without accuracy or
        `monitor=`) fails before the first trial, in `shrink`'s own words,
        and not inside every trial."""
        given = sorted(set(self.shrink) & set(_GIVEN_TO_SHRINK))
        if given:
            raise ValueError(
                f"Invalid value for argument `shrink`: {given} are set by the search (each trial shrinks "
                f"its own model on `x`, `y` and `validation_data`); leave them out. Received: shrink={self.shrink!r}"
            )
        # Only the budget is the check's own: one step of one epoch.
        _validate.integer("shrink['epochs']", self.shrink.get("epochs", 10), minimum=1)
        budget = {"epochs": 1, "steps_per_epoch": 1, "validation_steps": 1}
        try:
            with warnings.catch_warnings():  # about a one-step shrink, not about the trials'
                warnings.simplefilter("ignore")
                shrink(model, self.x, self.y, validation_data=self.validation_data,
                       **{**self._shrink_kwargs(), **budget})
        except (TypeError, ValueError) as error:
            raise type(error)(
                f"Invalid value for argument `shrink`: rk.shrink(**shrink) refuses it for this model: {error} "
                f"Received: shrink={self.shrink!r}"
            ) from error

    def _shrink_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, **self.shrink}

    def _evaluate(self, model, steps=None) -> dict:
        data = self.validation_data
        if isinstance(data, (tuple, list)):
            x, y, sample_weight = (*data, None)[:3]
            logs = model.evaluate(x, y, batch_size=self.batch_size, sample_weight=sample_weight, steps=steps,
                                  verbose=0, return_dict=True)
        else:
            logs = model.evaluate(data, steps=steps, verbose=0, return_dict=True)
        return {f"val_{k}": float(v) for k, v in logs.items()}

    def run(self, strength: float) -> dict:
        model = self._model()
        attached = None
        if strength > 0:
            attached = self._attach(model, strength)
        callbacks = list(self.callbacks)
        if self.patience is not None:
            # Keras logs `val_*` (its `val_loss` with the penalty in it), not our other columns.
            own = self.objective.name.startswith("val_")
            callbacks.append(keras.callbacks.EarlyStopping(
                self.objective.name if own else "val_loss", patience=self.patience,
                mode=self.objective.direction if own else "min", restore_best_weights=True))
        # Without early stopping nothing needs the per-epoch validation: the
        # measurement below is the one that counts.
        history = model.fit(self.x, self.y, epochs=self.epochs, batch_size=self.batch_size, callbacks=callbacks,
                            validation_data=None if self.patience is None else self.validation_data, verbose=0)
        record = {"penalty": float(keras.ops.convert_to_numpy(total_penalty(model))),
                  "epochs": float(len(history.epoch))}
        report = sparsity_report(model, self.weights, self.threshold).total
        record.update(zeros=report.sparsity, near_zero=report.near_zero_fraction)
        if attached is not None:
            attached.undo()  # measure the data loss alone
        record.update(self._evaluate(model))
        if self.shrink is not None:
            shrink(model, self.x, self.y, validation_data=self.validation_data, **self._shrink_kwargs())
            record.update({f"shrunk_{k}": v for k, v in self._evaluate(model).items()})
            record["shrunk_zeros"] = sparsity_report(model, self.weights, self.threshold).total.sparsity
        return record
