"""`ShrinkResult`: what a shrink did, as `ShrinkPhase.result` and `shrink()`
return it."""

from __future__ import annotations

import dataclasses

from keras_regkit import stats
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import units as units_lib


@dataclasses.dataclass
class ShrinkResult:
    """What a shrink did.

    Attributes:
        mode: `"sparsity"` (a target) or `"tolerance"` (an accuracy limit).
        target: The sparsity asked for (sparsity mode), or the ceiling the
            ramp headed for (tolerance mode).
        tolerance: The accuracy tolerance (tolerance mode), else None.
        baseline, final: The validation metric (`monitor`) at the start
            and at the end (None without validation data).
        monitor: What `baseline` and `final` measure: `"top-1 accuracy"`
            by default, the `monitor=` asked for, or `"val_loss"` for a
            model without a class output in the sparsity mode.
        levels: The tolerance mode's checks, in order:
            `(sparsity, metric, held)` for each check (a level that failed
            its first check appears twice).
        disagreement: Fraction of the guard's reference inputs whose top-1
            class differs from the starting model's at the end (tolerance
            mode), else None.
        started_at_epoch: The epoch the shrink began (None if it never did).
        steps: Training steps the shrink ran.
        cuts: How many cuts it made.
        rollbacks: How often it went back to its last good state (a guard
            check that failed, a non-finite loss).
        stopped_at: Fraction of the budget at which a level failed its check
            (None if none did).
        threshold: The highest score cut (entries: `|w|` or `|w|·v^(1/4)`;
            units: their mean squared score relative to their layer's mean).
        sparsity: Fraction of exact zeros over the covered weights (of units
            with `granularity="unit"`, of blocks removed with `"block"`:
            `unit_sparsity`).
        unit_sparsity: Fraction of dead units over the covered layers (of
            blocks removed, with `granularity="block"`).
        layers: Per-weight `LayerStats` at the end.
        dead_units: Layer path -> `(dead, total)` units at the end;
            `keras_regkit.compact` removes the dead.
        granularity: `"weight"`, `"unit"`, `"head"`, `"block"` or `"N:M"`.
        score: The score's name.
        outcome: `"pruned"`, `"stopped by the check"` (a level failed, the
            model ends at the last one that held), `"baseline"` (not even
            the first level held: the starting weights are back),
            `"interrupted"` or `"not started"`.

    Example:

    >>> result = rk.shrinking.ShrinkResult("sparsity", target=0.9, baseline=0.97, final=0.965,
    ...     monitor="top-1 accuracy", sparsity=0.9, outcome="pruned")
    >>> print(str(result).splitlines()[0])
    shrink (sparsity mode): pruned; exact zeros 90.0% (target 90.0%); top-1 accuracy 0.97 -> 0.965
    """

    mode: str
    target: float | None = None
    tolerance: float | None = None
    baseline: float | None = None
    final: float | None = None
    monitor: str | None = None
    disagreement: float | None = None
    started_at_epoch: int | None = None
    steps: int = 0
    cuts: int = 0
    rollbacks: int = 0
    stopped_at: float | None = None
    threshold: float | None = None
    levels: list = dataclasses.field(default_factory=list)
    sparsity: float = 0.0
    unit_sparsity: float = 0.0
    layers: list = dataclasses.field(default_factory=list)
    dead_units: dict = dataclasses.field(default_factory=dict)
    granularity: str = "weight"
    score: str = "curvature"
    outcome: str = "not started"

    # What a resumed shrink takes back.
    RESUMED = ("baseline", "monitor", "started_at_epoch", "cuts", "rollbacks", "stopped_at", "threshold", "levels")

    def get_state(self) -> dict:
        return {name: getattr(self, name) for name in self.RESUMED}

    def set_state(self, state: dict) -> None:
        for name in self.RESUMED:
            setattr(self, name, state[name])
        self.levels = [tuple(check) for check in self.levels]

    def measure_end(self, model, refs: list, granularity, check, steps: int) -> None:
        """Fills in what the model is at the end: its zeros, dead units,
        per-layer statistics, and `check`'s metric and guard (if measured)."""
        self.steps = steps
        if check.data is not None:
            self.final = check.measure(model)[0]
        if check.guard is not None:
            self.disagreement = check.guard.disagreement(model)
        self.layers = stats.WeightStats(model, granularity.weights).compute()
        zeros, total = granularity_lib.Weights().count_dead(refs)
        self.sparsity = zeros / total if total else 0.0
        self.dead_units = units_lib.dead_units(model)
        if not isinstance(granularity, (granularity_lib.Weights, granularity_lib.NM)):  # units, heads, blocks
            dead, units = granularity.count_dead(refs)
            self.unit_sparsity = self.sparsity = dead / units if units else 0.0

    def __str__(self) -> str:
        what = {"unit": "dead units", "head": "dead heads", "block": "removed blocks"}.get(self.granularity, "exact zeros")
        head = f"shrink ({self.mode} mode): {self.outcome}; {what} {self.sparsity:.1%}"
        if self.mode == "sparsity" and self.target is not None:
            head += f" (target {self.target:.1%})"
        if self.baseline is not None and self.final is not None:
            head += f"; {self.monitor or 'validation'} {self.baseline:.4g} -> {self.final:.4g}"
        lines = [head]
        details = [f"{self.cuts} cuts in {self.steps} steps by {self.score} score"]
        if self.disagreement is not None:
            details.append(f"disagreement with the start {self.disagreement:.2%}")
        if self.levels:
            held = [level for level, _, ok in self.levels if ok]
            details.append(f"levels held: {', '.join(f'{level:.1%}' for level in held) or 'none'}")
        if self.stopped_at is not None:
            details.append(f"a level failed at {self.stopped_at:.0%} of the budget")
        if self.rollbacks:
            details.append(f"{self.rollbacks} rollbacks")
        lines.append("; ".join(details))
        lines += [f"  {s.name}: {s.sparsity:.1%} of {s.params:,}" for s in self.layers]
        dead = [f"{name} {d}/{n}" for name, (d, n) in self.dead_units.items() if d]
        if dead:
            lines.append(f"dead units: {', '.join(dead)}")
        return "\n".join(lines)
