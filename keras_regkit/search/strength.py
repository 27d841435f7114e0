"""`search_strength`: its arguments, checked before the first trial, and
the two stages it runs."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from typing import Callable, Mapping, Sequence, Union

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._keras.tuner import create_objective
from keras_regkit.regularizers import ElasticNet
from keras_regkit.search.result import StrengthSearchResult
from keras_regkit.search.stages import run_stages
from keras_regkit.search.trial import Trainer
from keras_regkit.shrinking.data import is_infinite
from keras_regkit.weights import LayerSelector


def _default_penalty(strength: float) -> keras.regularizers.Regularizer:
    return ElasticNet(l1=strength, l2=strength)


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
    trainer = Trainer(build_model, x, y, validation_data, penalty, layers, weights, epochs, batch_size,
                      patience, list(callbacks), dict(shrink) if shrink else None, threshold, seed)
    recorded = trainer.check(low)  # builds one model: every bad argument fails here
    objective = create_objective(objective)
    if not isinstance(objective, kt.Objective) or objective.name not in recorded:
        raise ValueError(
            f"Invalid value for argument `objective`: {getattr(objective, 'name', objective)!r} is "
            f"not recorded by the trials. Valid: {sorted(recorded)}"
        )
    trainer.objective = objective
    _warn_if_unstandardised(x)

    stages = (kt, trainer, objective, low, high, fine, project_name, overwrite, verbose)
    if directory:
        return run_stages(*stages, directory)
    # A folder nobody named cannot be resumed from: it goes when the search
    # ends, unless every trial failed (the error names it).
    directory = tempfile.mkdtemp(prefix="keras_regkit_search_")
    keep = False
    try:
        return run_stages(*stages, directory)
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


def _import_keras_tuner():
    try:
        import keras_tuner
    except ImportError:
        raise ImportError(
            "search_strength needs KerasTuner: pip install 'keras_regkit[tune]'"
        ) from None
    return keras_tuner


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
