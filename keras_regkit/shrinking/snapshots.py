"""What the shrink goes back to when a cut went too far or the loss
diverged: the weights (their zeros are the held ones) and the optimizer's
per-weight state, copied to host memory."""

from __future__ import annotations

import dataclasses

import keras

from keras_regkit.pruning.hold import hold_zeros


def optimizer_slots(optimizer) -> list:
    """The optimizer's per-weight state: every variable but its step count
    (schedules key on it) and its learning rate."""
    skip = {id(optimizer.iterations)}
    skip.update(id(v) for v in optimizer.variables if v.name == "learning_rate")
    return [v for v in optimizer.variables if id(v) not in skip]


@dataclasses.dataclass
class Snapshot:
    """A state the shrink can go back to, taken at training step `step`
    with `sparsity` of the covered weights at zero."""

    weights: list
    slots: list
    step: int
    sparsity: float

    @classmethod
    def take(cls, model: keras.Model, step: int, sparsity: float) -> Snapshot:
        slots = [keras.ops.convert_to_numpy(v) for v in optimizer_slots(model.optimizer)]
        return cls(model.get_weights(), slots, step, sparsity)

    def get_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Snapshot:
        return cls(**state)

    def restore(self, model: keras.Model, held: list) -> None:
        """Puts the weights and optimizer state back, and holds the zeros of
        the `held` variables (their mask is the snapshot's)."""
        model.set_weights(self.weights)
        for variable, value in zip(optimizer_slots(model.optimizer), self.slots):
            variable.assign(value)
        hold_zeros(model, held)
