"""`Int8Training`: quantization-aware fine-tuning in `fit`, and the shrink's
`int8=` option."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from keras_regkit import _constraints as constraints
from keras_regkit.deploy.calibration import CALIBRATION_SAMPLES
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.quantization.simulation import Int8Simulation


# The backends whose `fit` trains through the simulation's straight-through
# rounding (OpenVINO and NumPy run inference only).
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")


def check_backend() -> None:
    """Refuses quantization-aware training on a backend that cannot train."""
    backend = keras.backend.backend()
    if backend not in TRAINING_BACKENDS:
        raise ValueError(
            f"Quantization-aware training trains through simulated int8 rounding, and the {backend!r} Keras "
            f"backend cannot train (nor trace the rounding's straight-through gradients). Set KERAS_BACKEND to "
            f"one of {list(TRAINING_BACKENDS)}; `Int8Simulation` alone (inference) runs on any. "
            f"Received: backend {backend!r}")


class Int8Training(keras.callbacks.Callback):
    """Quantization-aware fine-tuning: `fit` trains through the converter's
    full int8 rounding (`Int8Simulation`), and keeps a pruned model's zeros.

    For a model pruned or shrunk earlier, fine-tuned before
    `export(int8=True)`; the shrink itself takes `int8=True`. The
    activations' ranges are measured again at the start of each epoch. At
    the end of `fit` the simulation is removed and the zeros released: the
    model is a float model, saved and exported as any other. Used as a
    context manager, a `fit` ended by an exception ends the same way.

    ```python
    with rk.quantization.Int8Training(x_train[:200]) as int8:
        model.fit(x_train, y_train, epochs=2, callbacks=[int8])
    rk.export(model, "model.tflite", int8=True, representative_data=x_train[:200])
    ```

    Args:
        representative_data: Inputs like the model's, as `export`'s
            `representative_data` (give `export` the same).
        hold_zeros: Keep the kernels' exact zeros (those not held
            already) through the fine-tune. Defaults to True.

    Raises:
        TypeError, ValueError: Bad arguments, or a Keras backend that
            cannot train (`TRAINING_BACKENDS`); at the start of `fit`, data
            that does not fit the model (see `Int8Simulation`).
    """

    def __init__(self, representative_data, hold_zeros: bool = True):
        super().__init__()
        if representative_data is None:
            raise ValueError(
                "Int8Training needs `representative_data=`: inputs like the model's (a few hundred training "
                "samples), from which the activations' ranges are set. Received: representative_data=None")
        if not isinstance(hold_zeros, bool):
            raise TypeError(f"Invalid value for argument `hold_zeros`: expected True or False. Received: "
                            f"hold_zeros={hold_zeros!r}")
        check_backend()
        self.representative_data, self.hold_zeros = representative_data, hold_zeros
        self.simulation, self._held = None, []

    def start(self, model: keras.Model) -> None:
        """Starts simulating int8 in `model` (and holding its zeros)."""
        self.stop()  # a fit ended by an exception outside `with`
        simulation = Int8Simulation(model, self.representative_data)  # checks first: nothing changed on error
        simulation.start()
        self.simulation = simulation
        if self.hold_zeros:
            variables = simulation.quantized_kernels()
            self._fresh = True
            self._held = [v for v in variables if constraints.find(v, hold_lib.HoldZeros) is None
                          and not bool(ops.convert_to_numpy(ops.all(ops.not_equal(v.value, 0))))]
            hold_lib.hold_zeros(model, self._held)

    def calibrate(self) -> None:
        """Measures the activations' ranges again (the weights moved)."""
        if self.simulation is not None and self.simulation.running:
            self.simulation.calibrate()

    def stop(self) -> None:
        """Removes the simulation and releases the zeros it held."""
        if self.simulation is None:
            return
        # Under JAX the masks ride in the optimizer step: they leave it too.
        hold_lib.release_held(self.simulation.model, self._held)
        self.simulation.stop()
        self.simulation, self._held = None, []

    def on_train_begin(self, logs=None):
        self.start(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if not getattr(self, "_fresh", False):
            self.calibrate()  # the first epoch starts calibrated
        self._fresh = False

    def on_train_end(self, logs=None):
        self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def for_shrink(int8, representative_data) -> Int8Training | None:
    """`ShrinkPhase`'s `int8=` and `representative_data=`: None for
    `int8=False`, else an `Int8Training` that does not hold zeros (the
    shrink holds its own)."""
    if int8 is False:
        if representative_data is not None:
            raise ValueError("`representative_data=` sets the ranges of simulated int8: give `int8=True` with it, "
                             "or leave it out. Received: int8=False")
        return None
    if int8 is not True:
        raise ValueError(
            "Invalid value for argument `int8`: expected True (fine-tune through full int8 rounding, as "
            "`export(int8=True)` quantizes) or False. Dynamic-range int8 quantizes activations at run time, "
            f"so there is nothing to simulate in training. Received: int8={int8!r}")
    if representative_data is None:
        raise ValueError(
            "`int8=True` needs `representative_data=`: NumPy arrays of inputs like the model's (a few hundred "
            "training samples; `shrink()` takes them from `x` when `x` is arrays). Received: representative_data=None")
    return Int8Training(representative_data, hold_zeros=False)


def shrink_representative_data(model, int8, representative_data, x):
    """`shrink()`'s `representative_data`, checked against `model` before
    `fit` starts: the first `CALIBRATION_SAMPLES` samples of `x` when not
    given and `x` is arrays. Warns when the training inputs reach beyond
    the representative data's range (the converter clips them there)."""
    arrays = all(isinstance(leaf, np.ndarray) for leaf in keras.tree.flatten(x))
    if int8 is True and representative_data is None and arrays:
        representative_data = keras.tree.map_structure(lambda a: a[:CALIBRATION_SAMPLES], x)
    if for_shrink(int8, representative_data) is None:
        return representative_data
    simulation = Int8Simulation(model, representative_data)
    if arrays and len(keras.tree.flatten(x)) == len(keras.tree.flatten(simulation.data)):
        for i, (train, sample) in enumerate(zip(keras.tree.flatten(x), keras.tree.flatten(simulation.data))):
            if not np.issubdtype(sample.dtype, np.floating):
                continue
            low, high = float(sample.min()), float(sample.max())
            outside = float(np.mean((train < low) | (train > high)))
            if outside > 0.001:
                warnings.warn(
                    f"`representative_data` covers [{low:.4g}, {high:.4g}] of input {i}, and {outside:.1%} of the "
                    "training inputs' values lie outside it: the int8 file (and the simulation) clip them there. "
                    "Give representative samples drawn from the training data.", stacklevel=3)
    return representative_data
