"""The tolerance mode's climb, as a state machine over plain data.

After the first, one-shot, cut, the sparsity rises to each level along a
cubic that slows to a stop there: the sparsity mode's shape, aimed at that
level, so that its last cuts are the smallest and the model arrives
recovered. Each rise takes `SEGMENT` of the budget, on a clock that runs
only while it cuts. At a level the model trains until it stops recovering
(its label-free drift from the start has not fallen for `PLATEAU` checks,
or `HOLD` of the budget has passed), and then the labels are read once. The
last `RESERVE` of the budget fine-tunes the level chosen. On a budget so
short that a rise rounds to one decision interval, every rise is one cut,
the first one too.

A level above one that held gets a second check if it fails its first: it
trains on for `PROBATION` of the budget left, and then its second check
decides (checked before its fine-tune, a level looks worse than it ends).
A level that holds with the model better than at the start by
`decisions.SKIP_GAIN` (beyond noise) has room for two levels' losses: the
next rise skips a level; nor does such a level need the fine-tune to keep
its promise, so a rise that would end in the reserve is begun anyway if it
reaches its level by the end (a failure there goes back to the level that
held, as it was checked, with no budget left to fine-tune it). That gain
is the same at every tolerance, so a looser tolerance, holding every level
a stricter one holds, climbs the same path at least as far.

If the first level fails at a raised learning rate (the rate the shrink
sets, 3x the user's: best for most models, too much for some), the climb
goes back to the start and climbs again at the user's rate.

`Climb.decide(observation)` and `Climb.checked(observation, verdict)` map
what the callback saw to an `Action` (see `decisions`); nothing here reads
a model, so every branch is tested without one (tests/test_shrinking_climb.py).
"""

from __future__ import annotations

import dataclasses
import math

from keras_regkit.shrinking.decisions import (
    CHECK, HOLD, RESTART, RISE, ROLLBACK, STOP, WAIT, Action, Observation, Verdict)

# In fractions of the budget: the rise from one level to the next, the
# longest wait at a level for it to recover, and the end of the budget kept
# for fine-tuning the chosen level; and the checks without progress that
# end a wait. Chosen on seeds 5-9 of benchmarks/bench_shrink_quality.py
# (digits, MNIST-1D); reported on 0-4.
SEGMENT, HOLD_LIMIT, RESERVE = 0.2, 0.05, 0.15
PLATEAU = 3
# A level failing its first check: the part of the budget left that it
# trains on before its second, last, check. Chosen on the same seeds.
PROBATION = 0.5


@dataclasses.dataclass
class ClimbState:
    """Where the climb is. `pending` is the level reached and awaiting its
    check (None while rising), `level` the last that held (0: none)."""

    pending: float | None = None
    level: float = 0.0
    level_began: int = 0  # the step at which `pending` was reached
    rise_clock: int = 0  # steps spent rising: the rises' own time
    rise_from: float = 0.0  # the sparsity the current rise starts at
    rise_began: int = 0  # the rise clock when it began
    retried: bool = False  # climbing again from the start
    stride: int = 1  # 2: the next level is skipped
    probation_until: float | None = None  # progress of the pending level's second check
    best_drift: float = math.inf
    stale: int = 0  # checks since the drift last fell


class Climb:
    """The climb's decisions over `levels` (rising sparsities), starting
    from a first cut to `initial` (on a short budget straight to the first
    level), cutting every `cut_every` steps.

    Example:

    >>> from keras_regkit.shrinking.climb import Climb
    >>> climb = Climb((0.8, 0.9), initial=0.5, cut_every=10)
    >>> seen = lambda step, **more: rk.shrinking.Observation(step, 1000, step / 1000, **more)
    >>> climb.decide(seen(0))  # the first cut
    Action(kind='rise', sparsity=0.5, last=False, stopped=False, reason='')
    >>> cuts = [climb.decide(seen(step)).sparsity for step in range(10, 201, 10)]  # every 10 steps
    >>> [round(cut, 3) for cut in cuts[4::5]], climb.state.pending  # a cubic to 80 %, which awaits its check
    ([0.673, 0.763, 0.795, 0.8], 0.8)
    >>> climb.decide(seen(210, drift=0.1)).kind  # while the model recovers, it waits
    'wait'
    """

    def __init__(self, levels: tuple[float, ...], initial: float = 0.0, cut_every: int = 10):
        self.levels = tuple(levels)
        self.initial = initial  # the first cut's sparsity
        self.cut_every = cut_every
        self.state = ClimbState(rise_from=initial)

    # -- where it stands ---------------------------------------------------
    def upcoming(self) -> list[float]:
        return [level for level in self.levels if level > self.state.level]

    def target(self) -> float:
        """The level the climb is rising to."""
        upcoming = self.upcoming()
        return upcoming[min(self.state.stride, len(upcoming)) - 1]

    def needs_drift(self) -> bool:
        """Whether the next decision reads the model's drift: at a level
        waiting for it to stop recovering."""
        return self.state.pending is not None and self.state.probation_until is None

    # -- the decisions -----------------------------------------------------
    def decide(self, seen: Observation) -> Action:
        """At a level: wait while the model recovers, then check it.
        Between levels: rise to the next, or hold where no rise fits."""
        state = self.state
        if seen.final:
            # Whatever is pending gets its check; a held level its last one.
            if state.pending is not None:
                return Action(CHECK, state.pending)
            return Action(CHECK) if seen.good_sparsity > 0 else Action(HOLD)
        if state.pending is not None:
            if state.probation_until is not None:
                waits = seen.progress < state.probation_until
            else:
                waits = self._recovering(seen)
            return Action(WAIT) if waits else Action(CHECK, state.pending)
        return self._rise(seen)

    def checked(self, seen: Observation, verdict: Verdict) -> Action:
        """The pending level's check came back (or, at the end, the held
        level's last check)."""
        state = self.state
        level = state.pending
        if seen.final:
            if verdict.held:
                if level is not None:
                    self._held(verdict.ahead)
                return Action(HOLD)
            if level is None:  # the level fine-tuned past its check: back to it as it passed
                return Action(ROLLBACK, reason="End of the budget: the final model fails the check")
            return self._end(seen, "End of the budget: the last level fails the check")
        if verdict.held:
            self._held(verdict.ahead)
            return self._rise(seen)
        if state.probation_until is None and state.level > 0 and PROBATION > 0:
            # Checked before its fine-tune, a level looks worse than it
            # ends: it trains on, and its second check decides.
            state.probation_until = seen.progress + PROBATION * (1.0 - seen.progress)
            return Action(WAIT, reason=f"{level:.2%} trains on to a second check")
        why = f"{level:.2%} fails its check"
        if state.level == 0 and not state.retried and seen.rate_raised:
            # The first level, at the raised rate: the rate is the suspect.
            # The start is the only state to go back to.
            state.pending, state.retried, state.probation_until = None, True, None
            state.rise_from, state.rise_began = self.initial, state.rise_clock
            return Action(RESTART, reason=why)
        return self._end(seen, why)

    # -- the rules ---------------------------------------------------------
    def _recovering(self, seen: Observation) -> bool:
        """Whether the model at the pending level is still getting closer to
        the start (so its check should wait)."""
        state = self.state
        if seen.drift < state.best_drift - 1e-9:
            state.best_drift, state.stale = seen.drift, 0
        else:
            state.stale += 1
        waited = (seen.step - state.level_began) / seen.total_steps
        return state.stale < PLATEAU and waited < HOLD_LIMIT and seen.progress <= 1.0 - RESERVE

    def _budget_left(self, progress: float) -> bool:
        """Whether there is a level to go on to, and time to reach it before
        the reserve (a rise that would be cut short is not begun: the level
        that held fine-tunes instead), or by the end after a level that held
        ahead of the start."""
        state = self.state
        rising = state.rise_clock > state.rise_began
        needed = 0.0 if rising else SEGMENT
        if not self.upcoming():
            return False
        if state.stride > 1:  # the level held ahead: its rise may end as late as the end
            return progress + needed <= 1.0 + 1e-9  # (0.8 + 0.2, in floats)
        return progress + needed <= 1.0 - RESERVE

    def _rises_in_one_cut(self, seen: Observation) -> bool:
        """Whether a rise rounds to one decision interval (a short budget:
        the regression benchmark's 50 steps, a decision every 10). Then every
        rise is a single cut, the first one too, which goes straight to the
        first level: a cut to `initial` before it would spend one of the few
        decisions without a check, and a second decision per rise would
        only finish the last few hundredths of its cubic."""
        return seen.budget_known and seen.total_steps * SEGMENT < 1.5 * self.cut_every

    def _rise_steps(self, seen: Observation) -> float:
        """The steps a rise takes on the rise clock."""
        return self.cut_every if self._rises_in_one_cut(seen) else max(seen.total_steps * SEGMENT, 1)

    def _rise(self, seen: Observation) -> Action:
        state = self.state
        if not self._budget_left(seen.progress):
            if seen.sparsity > seen.good_sparsity:
                # Cut on the way to a level that was never checked.
                return Action(ROLLBACK, stopped=True,
                              reason=f"out of budget before {self.target():.2%}")
            return Action(HOLD)  # the rest fine-tunes the last level that held
        if seen.step or self._rises_in_one_cut(seen):
            state.rise_clock += self.cut_every
        target = self.target()
        start = min(state.rise_from, target)
        done = min((state.rise_clock - state.rise_began) / self._rise_steps(seen), 1.0)
        if done < 1.0:
            return Action(RISE, target - (target - start) * (1.0 - done) ** 3)
        state.pending, state.level_began, state.best_drift, state.stale = target, seen.step, math.inf, 0
        state.probation_until = None
        return Action(RISE, target)

    def _held(self, ahead: bool) -> None:
        """The pending level held; `ahead`: better than at the start by
        `SKIP_GAIN`, so the next rise skips a level."""
        state = self.state
        state.level, state.pending, state.probation_until = state.pending, None, None
        state.stride = 2 if ahead else 1
        state.rise_from, state.rise_began = state.level, state.rise_clock

    def _end(self, seen: Observation, why: str) -> Action:
        """A level failed: back to the last that held, fine-tuned from here
        with its zeros fixed; if none did, back to the start and stop."""
        self.state.pending = None
        return Action(STOP if seen.good_sparsity == 0 else ROLLBACK, stopped=True, reason=why)

    def rolled_back(self) -> None:
        """The callback went back to the last good state on its own (the
        loss diverged): no level is pending; the rise to it starts again."""
        self.state.pending, self.state.probation_until = None, None

    # -- resuming ----------------------------------------------------------
    def get_state(self) -> dict:
        return dataclasses.asdict(self.state)

    def set_state(self, state: dict) -> None:
        self.state = ClimbState(**state)
