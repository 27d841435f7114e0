"""How sparse the model should be at each point of the shrink: sparsity as a
function of the fraction of the budget spent."""

from __future__ import annotations

from keras_regkit import _validate


class SparsitySchedule:
    """The sparsity the shrink cuts to, given how far through its budget it is.

    Subclasses implement `__call__(progress)`, with `progress` in [0, 1] (the
    fraction of the shrink's training steps done), returning the fraction of
    the covered weights (or units) that should be exact zeros by then; and
    set `target`, the value reached at the end. The shrink never lowers the
    sparsity: a value below the current one makes no cut.
    """

    target: float

    def __call__(self, progress: float) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


class CubicRamp(SparsitySchedule):
    """Gradual pruning's cubic ramp, from a one-shot first cut to the target.

    `s(p) = target + (initial - target) * (1 - p / ramp_fraction) ** 3` for
    progress `p < ramp_fraction`, then `target`: large cuts early, while
    there are many small weights to take, smaller ones as the target nears,
    and the last `1 - ramp_fraction` of the budget trains with the zeros
    fixed. `initial` above `target` is taken as `target` (one cut, then
    training with the zeros held).

    Args:
        target: Final sparsity, in [0, 1].
        initial: Sparsity of the first cut, made before any training step.
            Defaults to 0.5, the best of 0, 0.5 and 0.8 on the shrink
            benchmark's MLPs.
        ramp_fraction: Fraction of the budget over which the sparsity rises,
            in (0, 1]. Defaults to 0.8.

    Example:

    >>> ramp = rk.shrinking.CubicRamp(0.98, initial=0.8, ramp_fraction=0.8)
    >>> [round(ramp(p), 4) for p in (0.0, 0.4, 0.8, 1.0)]
    [0.8, 0.9575, 0.98, 0.98]

    References:
        Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
        pruning for model compression", 2017 (equation 1).
    """

    def __init__(self, target: float, initial: float = 0.5, ramp_fraction: float = 0.8):
        self.target = _validate.real("target", target, maximum=1.0)
        self.initial = _validate.real("initial", initial, maximum=1.0)
        self.ramp_fraction = _validate.real("ramp_fraction", ramp_fraction, maximum=1.0)
        if self.ramp_fraction == 0:
            raise ValueError(
                "Invalid value for argument `ramp_fraction`: expected a float in (0, 1]. "
                f"Received: ramp_fraction={ramp_fraction}"
            )

    def __call__(self, progress: float) -> float:
        if progress >= self.ramp_fraction:
            return self.target
        start = min(self.initial, self.target)
        remaining = 1.0 - max(progress, 0.0) / self.ramp_fraction
        return self.target + (start - self.target) * remaining**3

    def get_config(self) -> dict:
        return {"target": self.target, "initial": self.initial, "ramp_fraction": self.ramp_fraction}

    def __repr__(self) -> str:
        return f"CubicRamp(target={self.target}, initial={self.initial}, ramp_fraction={self.ramp_fraction})"
