"""One trial of the search: build, attach the penalty, fit with early
stopping, measure (and shrink, when the search shrinks)."""

from __future__ import annotations

import warnings

import keras

from keras_regkit import _validate
from keras_regkit.attach import apply_regularizers, total_penalty
from keras_regkit.proximal import bind_proximal
from keras_regkit.search.result import EXTRA_COLUMNS
from keras_regkit.shrinking import shrink
from keras_regkit.stats import sparsity_report

# `rk.shrink` arguments that every trial sets itself.
_GIVEN_TO_SHRINK = ("model", "x", "y", "validation_data")


class Trainer:
    """One trial: build, attach, fit with early stopping, measure.

    The arguments are `search_strength`'s, already checked (`callbacks` a
    list, `shrink` a dict or None). Set `objective` (a `keras_tuner.Objective`)
    before `run`: early stopping watches it.

    Example:

    ```python
    trainer = Trainer(build, x, y, (x_val, y_val), rk.regularizers.L1, "*", "kernel", epochs=20,
                      batch_size=64, patience=3, callbacks=[], shrink=None, threshold=1e-3, seed=0)
    recorded = trainer.check(1e-4)  # the names a trial records
    trainer.objective = keras_tuner.Objective("val_loss", "min")
    row = trainer.run(1e-4)
    ```
    """

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
        recorded = {*logs, *EXTRA_COLUMNS}
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

