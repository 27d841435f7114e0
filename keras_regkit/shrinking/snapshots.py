"""What the shrink goes back to when a cut went too far or the loss
diverged, or when `fit` fails: the weights (their zeros are the held ones),
the optimizer's per-weight state and its step count, copied to host memory."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_regkit.pruning.hold import MASK_NAME
from keras_regkit.pruning.select import host_view, on_cpu


def optimizer_slots(optimizer) -> list:
    """The optimizer's per-weight state: every variable but its step count
    (schedules key on it), its learning rate and, under JAX, the masks of
    held zeros passed into its step (a copy of each would double a
    snapshot; a restore makes them again from the weights' zeros)."""
    skip = {id(optimizer.iterations)}
    skip.update(id(v) for v in optimizer.variables if v.name in ("learning_rate", MASK_NAME))
    return [v for v in optimizer.variables if id(v) not in skip]


@dataclasses.dataclass
class Snapshot:
    """A state the shrink can go back to, taken at training step `step`
    with `sparsity` of the covered weights at zero; `iterations` is the
    optimizer's step count then (None in a state saved before it was kept)."""

    weights: list
    slots: list
    step: int
    sparsity: float
    iterations: int | None = None

    @classmethod
    def take(cls, model: keras.Model, step: int, sparsity: float, reuse: Snapshot | None = None) -> Snapshot:
        """The model's state now. `reuse`: a snapshot no longer needed,
        whose arrays are written over where they match: memory the process
        already has, where fresh arrays of a large model fault in page by
        page (20 M parameters and their Adam slots: 0.15-0.75 s a snapshot
        against the copies' tens of milliseconds)."""
        weights = _copied(model.weights, reuse.weights if reuse else None)
        slots = _copied(optimizer_slots(model.optimizer), reuse.slots if reuse else None)
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        return cls(weights, slots, step, sparsity, iterations)

    def get_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Snapshot:
        return cls(**state)

    def restore(self, model: keras.Model, *, rewind: bool = False) -> None:
        """Puts the weights and optimizer state back (the zeros held are
        the holder's to update). `rewind`: the
        optimizer's step count too, for a shrink that ends here because
        `fit` failed (nothing of it stays); a rollback within training keeps
        the count, which learning-rate schedules key on."""
        model.set_weights(self.weights)
        for variable, value in zip(optimizer_slots(model.optimizer), self.slots):
            variable.assign(value)
        if rewind and self.iterations is not None:
            model.optimizer.iterations.assign(self.iterations)


def _copied(variables: list, arrays: list | None) -> list[np.ndarray]:
    """Host copies of `variables`' values, written into `arrays` where one
    has the value's shape and dtype (on the CPU: a variable elsewhere is
    copied to fresh host memory anyway).

    Under JAX a restored variable may share the memory of the array it was
    restored from (JAX's CPU arrays can alias NumPy's), until its next
    update; writing over that array then writes the variable's own value
    into it, which changes nothing."""
    if arrays is None or len(arrays) != len(variables):
        arrays = [None] * len(variables)
    copies = []
    for variable, array in zip(variables, arrays):
        if not on_cpu(variable):
            copies.append(keras.ops.convert_to_numpy(variable))
            continue
        value = host_view(variable.value)
        if isinstance(array, np.ndarray) and array.shape == value.shape and array.dtype == value.dtype:
            np.copyto(array, value)
            copies.append(array)
        else:
            copies.append(np.array(value))
    return copies
