"""The inputs of one layer of a model, read while the model runs on
calibration data: what `prune_reconstructed` needs of each layer it prunes
(its input Gram matrix), one layer at a time.

A layer's inputs are read with its `call` briefly wrapped
(`calibration.reading_inputs`), which sees the layers inside composite
layers too; a pass stops (`Reached`) as soon as the layer being read has
read its inputs. Only one layer's Gram matrix and one batch of its inputs
are alive at a time.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_regkit.pruning import calibration


def numpy(value) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(value) if ops.is_tensor(value) else value)


class Gram:
    """`X Xᵀ`, summed in float64 over the rows `add` is given: one layer's
    input Gram matrix (its Hessian), the only one alive at a time. Given
    the layer's `weights` (inputs x units), also what the dense target
    needs: `cross`, `X X_dᵀ` with the inputs `X_d` the layer had in the
    unpruned model, and `dense_energy`, `||W X_d||²`."""

    def __init__(self, size: int, weights: np.ndarray | None = None):
        self.matrix = np.zeros((size, size))
        self.weights = weights
        self.cross = None if weights is None else np.zeros((size, size))
        self.dense_energy = 0.0
        self.rows = 0

    def add(self, rows: np.ndarray, dense_rows: np.ndarray | None = None) -> None:
        rows = rows.astype("float64", copy=False)
        with np.errstate(all="ignore"):  # inputs that overflow are refused after the pass
            self.matrix += rows.T @ rows
            if dense_rows is not None:
                dense_rows = dense_rows.astype("float64", copy=False)
                self.cross += rows.T @ dense_rows
                self.dense_energy += float(np.sum((dense_rows @ self.weights) ** 2))
        self.rows += len(rows)


class Reached(Exception):
    """Ends a forward pass once the layer being calibrated has read its
    inputs: the rest of the model is not needed."""


def _samples_in(batch) -> int:
    shape = np.shape(keras.tree.flatten(batch)[0])
    return int(shape[0]) if shape else 1


def run(model, batch) -> None:
    """`model(batch)`, up to `Reached`; any other failure is the data's."""
    try:
        model(batch, training=False)
    except Reached:
        pass
    except Exception as error:
        raise ValueError(
            "Invalid value for argument `calibration_data`: the model cannot be called on it "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass inputs as "
            "`model(x)` takes them (arrays, a dict or list of arrays, or a dataset of them).") from None


def batch_source(calibration_data, batch_size: int, steps):
    """A function returning an iterable of the calibration batches, read
    again for every layer: arrays are sliced each time; a dataset or
    generator is read once and its batches (inputs only) kept on the host."""
    if isinstance(calibration_data, (np.ndarray, list, tuple, dict)) or ops.is_tensor(calibration_data):
        return lambda: calibration.batches(calibration_data, batch_size, steps)
    kept = [keras.tree.map_structure(numpy, batch) for batch in calibration.batches(calibration_data, batch_size, steps)]
    return lambda: kept


@dataclasses.dataclass
class Survey:
    """What one pass tells of each covered layer: its place in the call
    order, how often one forward pass calls it, its rows per sample."""

    order: list = dataclasses.field(default_factory=list)
    calls: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)
    samples: int = 0


def survey(model, covered: dict, batches) -> Survey:
    """Runs the model on the first batch with every covered layer's inputs
    read, and counts the samples of every batch (refusing non-finite ones)."""
    survey = Survey()

    def read(layer, inputs):
        key = id(layer)
        if key not in survey.calls:
            survey.order.append(key)
        survey.calls[key] = survey.calls.get(key, 0) + 1
        survey.rows[key] = survey.rows.get(key, 0) + len(covered[key].rows(numpy(inputs)))

    for step, batch in enumerate(batches()):
        calibration.check_finite_batch(batch, step, survey.samples)
        if step == 0:
            with calibration.reading_inputs([linear.layer for linear in covered.values()], read):
                run(model, batch)
            first = _samples_in(batch)
            survey.rows = {key: rows / first for key, rows in survey.rows.items()}
        survey.samples += _samples_in(batch)
    if not survey.samples:
        raise ValueError("Invalid value for argument `calibration_data`: it holds no samples.")
    return survey


def check_enough_samples(survey: Survey, covered: dict, names: dict, steps) -> None:
    for key in survey.order:
        linear, per_sample = covered[key], survey.rows[key]
        if survey.samples * per_sample < linear.inputs:
            needed = math.ceil(linear.inputs / per_sample)
            cap = "" if steps is not None else (
                f" (a dataset or generator is read up to {calibration.CALIBRATION_SAMPLES} samples unless "
                "`calibration_steps` is given)")
            raise ValueError(
                f"Invalid value for argument `calibration_data`: its {survey.samples} samples give "
                f"{names[key]!r} {survey.samples * per_sample:g} input rows ({per_sample:g} per sample), fewer "
                f"than the {linear.inputs} inputs its kernel reads: their Gram matrix would be singular, and the "
                f"reconstruction would fit these samples rather than the layer. Pass at least {needed} samples"
                f"{cap}. Nothing was changed.")


def gram(model, linear, calls: int, batches, unpruned=None) -> Gram:
    """The Gram matrix of `linear`'s inputs over every calibration batch,
    as the model computes them now (with the layers before it pruned).

    With `unpruned`, a context manager that puts the model back as it was
    while open, each batch is run a second time in it and the `Gram` also
    holds what the dense target needs (two batches of inputs alive)."""
    gram = Gram(linear.inputs + linear.free, None if unpruned is None else linear.matrix())
    seen = []

    def read(layer, inputs):
        seen.append(linear.rows(numpy(inputs)))
        if len(seen) == calls:
            raise Reached

    with calibration.reading_inputs([linear.layer], read):
        for batch in batches():
            seen.clear()
            run(model, batch)
            pruned = list(seen)
            if unpruned is None:
                for rows in pruned:
                    gram.add(rows)
                continue
            seen.clear()
            with unpruned():
                run(model, batch)
            for rows, dense_rows in zip(pruned, seen):
                gram.add(rows, dense_rows)
    seen.clear()
    return gram
