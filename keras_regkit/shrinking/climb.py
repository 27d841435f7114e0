"""The tolerance mode's climb: where it is among its levels, how it rises to
the next one, and when a level has waited long enough for its check.

After the first, one-shot, cut, the sparsity rises to each level along a
cubic that slows to a stop there: the sparsity mode's shape, aimed at that
level, so that its last cuts are the smallest and the model arrives
recovered. Each rise takes `SEGMENT` of the budget, on a clock that runs
only while it cuts. At a level the model trains until it stops recovering
(its label-free drift from the start has not fallen for `PLATEAU` checks,
or `HOLD` of the budget has passed), and then the phase reads the labels
once. The last `RESERVE` of the budget always fine-tunes.

A level above one that held gets a second check if it fails its first: it
trains on for `PROBATION` of the budget left, and then its second check
decides (checked before its fine-tune, a level looks worse than it ends).
A level that holds with the model better than at the start by more than
the tolerance (beyond noise) has room for two levels' losses: the next rise
skips a level.

If the first level fails at a raised learning rate (the rate the shrink
sets, 3x the user's: best for most models, too much for some), the climb
goes back to the start and climbs again at the user's rate.
"""

from __future__ import annotations

import math

# In fractions of the budget: the rise from one level to the next, the
# longest wait at a level for it to recover, and the end of the budget kept
# for fine-tuning the chosen level; and the checks without progress that
# end a wait. Chosen on seeds 5-9 of
# benchmarks/bench_shrink_quality.py (digits, MNIST-1D); reported on 0-4.
SEGMENT, HOLD, RESERVE = 0.2, 0.05, 0.15
PLATEAU = 3
# A level failing its first check: the part of the budget left that it
# trains on before its second, last, check. Chosen on the same seeds.
PROBATION = 0.5


class Climb:
    """The climb's position. `pending` is the level reached and awaiting
    its check (None while rising), `level` the last that held."""

    def __init__(self, levels: tuple[float, ...], initial: float = 0.0):
        self.levels = levels
        self.initial = initial  # the first cut's sparsity
        self.pending: float | None = None
        self.level = 0.0
        self.level_began = 0  # the step at which `pending` was reached
        self.rise_clock = 0  # steps spent rising: the rises' own time
        self.rise_from = initial  # the sparsity the current rise starts at
        self.rise_began = 0  # the rise clock when it began
        self.retried = False  # climbing again from the start
        self.stride = 1  # 2: the next level is skipped
        self.probation_until: float | None = None  # progress of the pending level's second check
        self.best_drift = math.inf
        self.stale = 0  # checks since the drift last fell

    def upcoming(self) -> list[float]:
        return [level for level in self.levels if level > self.level]

    def target(self) -> float:
        """The level the climb is rising to."""
        upcoming = self.upcoming()
        return upcoming[min(self.stride, len(upcoming)) - 1]

    def budget_left(self, progress: float) -> bool:
        """Whether there is a level to go on to, and time to reach it before
        the reserve (a rise that would be cut short is not begun: the level
        that held fine-tunes instead)."""
        rising = self.rise_clock > self.rise_began
        needed = 0.0 if rising else SEGMENT
        return bool(self.upcoming()) and progress + needed <= 1.0 - RESERVE

    def recovering(self, drift: float, step: int, total_steps: int, progress: float) -> bool:
        """Whether the model at the pending level is still getting closer to
        the start (so its check should wait)."""
        if drift < self.best_drift - 1e-9:
            self.best_drift, self.stale = drift, 0
        else:
            self.stale += 1
        waited = (step - self.level_began) / total_steps
        return self.stale < PLATEAU and waited < HOLD and progress <= 1.0 - RESERVE

    def rise(self, step: int, total_steps: int, cut_every: int) -> tuple[float, bool]:
        """The sparsity to cut to now on the way to the next level, and
        whether the rise is over (the level is reached)."""
        if step:
            self.rise_clock += cut_every
        target = self.target()
        start = min(self.rise_from, target)
        done = min((self.rise_clock - self.rise_began) / max(total_steps * SEGMENT, 1), 1.0)
        return target - (target - start) * (1.0 - done) ** 3, done >= 1.0

    def reach(self, level: float, step: int) -> None:
        self.pending, self.level_began, self.best_drift, self.stale = level, step, math.inf, 0
        self.probation_until = None

    def probation(self, progress: float) -> bool:
        """Gives the pending level, which failed its first check, a second
        one later (once, and only above a level that held)."""
        if self.probation_until is not None or self.level == 0 or PROBATION <= 0:
            return False
        self.probation_until = progress + PROBATION * (1.0 - progress)
        return True

    def held(self, ahead: bool = False) -> None:
        """The pending level held; `ahead`: better than at the start by
        more than the tolerance, so the next rise skips a level."""
        self.level, self.pending, self.probation_until = self.pending, None, None
        self.stride = 2 if ahead else 1
        self.rise_from, self.rise_began = self.level, self.rise_clock

    def restart(self) -> None:
        """Climbs again from the start (and its first cut), once."""
        self.pending, self.retried, self.probation_until = None, True, None
        self.rise_from, self.rise_began = self.initial, self.rise_clock

    # -- resuming ----------------------------------------------------------
    _SAVED = ("pending", "level", "level_began", "rise_clock", "rise_from", "rise_began", "retried",
              "best_drift", "stale", "probation_until", "stride")

    def state(self) -> dict:
        return {name: getattr(self, name) for name in self._SAVED}

    def restore(self, state: dict) -> None:
        for name in self._SAVED:
            setattr(self, name, state[name])
