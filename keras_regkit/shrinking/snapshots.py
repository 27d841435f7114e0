"""What the shrink goes back to when a cut went too far or the loss
diverged, or when `fit` fails: the weights (their zeros are the held ones),
the optimizer's per-weight state and its step count, copied to host memory."""

from __future__ import annotations

import dataclasses

import keras

from keras_regkit.pruning.hold import MASK_NAME, hold_zeros


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
    def take(cls, model: keras.Model, step: int, sparsity: float) -> Snapshot:
        slots = [keras.ops.convert_to_numpy(v) for v in optimizer_slots(model.optimizer)]
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        return cls(model.get_weights(), slots, step, sparsity, iterations)

    def get_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Snapshot:
        return cls(**state)

    def restore(self, model: keras.Model, held: list, rewind: bool = False) -> None:
        """Puts the weights and optimizer state back, and holds the zeros of
        the `held` variables (their mask is the snapshot's). `rewind`: the
        optimizer's step count too, for a shrink that ends here because
        `fit` failed (nothing of it stays); a rollback within training keeps
        the count, which learning-rate schedules key on."""
        model.set_weights(self.weights)
        for variable, value in zip(optimizer_slots(model.optimizer), self.slots):
            variable.assign(value)
        if rewind and self.iterations is not None:
            model.optimizer.iterations.assign(self.iterations)
        hold_zeros(model, held)
