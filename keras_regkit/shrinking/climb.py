"""The tolerance mode's climb: where it is among its levels, and when a
level has waited long enough for its check.

The ramp is the sparsity mode's, headed for `max_sparsity`, on a clock that
runs only while it cuts. It stops at each level; the model trains there
until it stops recovering (its label-free drift from the start has not
fallen for `PLATEAU` checks, or `HOLD` of the budget has passed), and then
the phase reads the labels once. The last `RESERVE` of the budget always
fine-tunes.
"""

from __future__ import annotations

import math

# In fractions of the budget: the cutting time of the ramp to
# `max_sparsity` (the sparsity mode's pace: slower ramps leave better
# models), the longest wait at a level for it to recover, and the end of the
# budget kept for fine-tuning the chosen level; and the checks without
# progress that end a wait. Chosen on seeds 5-9 of
# benchmarks/bench_shrink_quality.py (digits, MNIST-1D).
RAMP, HOLD, RESERVE = 0.6, 0.2, 0.15
PLATEAU = 3


class Climb:
    """The climb's position. `pending` is the level reached and awaiting
    its check (None while ramping), `level` the last that held."""

    def __init__(self, levels: tuple[float, ...]):
        self.levels = levels
        self.pending: float | None = None
        self.level = 0.0
        self.level_began = 0  # the step at which `pending` was reached
        self.ramp_clock = 0  # steps spent cutting: the ramp's own time
        self.best_drift = math.inf
        self.stale = 0  # checks since the drift last fell

    def upcoming(self) -> list[float]:
        return [level for level in self.levels if level > self.level]

    def budget_left(self, progress: float) -> bool:
        """Whether there is a level to go on to, before the reserve."""
        return bool(self.upcoming()) and progress <= 1.0 - RESERVE

    def recovering(self, drift: float, step: int, total_steps: int, progress: float) -> bool:
        """Whether the model at the pending level is still getting closer to
        the start (so its check should wait)."""
        if drift < self.best_drift - 1e-9:
            self.best_drift, self.stale = drift, 0
        else:
            self.stale += 1
        waited = (step - self.level_began) / total_steps
        return self.stale < PLATEAU and waited < HOLD and progress <= 1.0 - RESERVE

    def ramp_position(self, step: int, total_steps: int, cut_every: int) -> float:
        """The ramp's own progress (1 at the end of its cutting time) after
        this step's cut time."""
        if step:
            self.ramp_clock += cut_every
        return self.ramp_clock / max(total_steps * RAMP, 1)

    def reach(self, level: float, step: int) -> None:
        self.pending, self.level_began, self.best_drift, self.stale = level, step, math.inf, 0

    def held(self) -> None:
        self.level, self.pending = self.pending, None

    # -- resuming ----------------------------------------------------------
    _SAVED = ("pending", "level", "level_began", "ramp_clock", "best_drift", "stale")

    def state(self) -> dict:
        return {name: getattr(self, name) for name in self._SAVED}

    def restore(self, state: dict) -> None:
        for name in self._SAVED:
            setattr(self, name, state[name])
