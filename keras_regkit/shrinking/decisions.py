"""What a shrink policy sees and what it answers: plain data, no Keras.

`ShrinkPhase` (the callback) asks its policy every `cut_every` training
steps, and once more at the end of the budget (`Observation.final`; the
budget's last step is that decision's, not a regular one). It gives an
`Observation` (how far through the budget, how sparse the model is and the
last good state was, the label-free drift when the policy asked for it);
the policy answers with an `Action`. When the action is a check, the
callback measures the model on its validation data, and the policy gets
the `Verdict` and answers again.
"""

from __future__ import annotations

import dataclasses

# The actions a policy can take, for `Action.kind`.
WAIT = "wait"  # train on; ask again at the next cut
CHECK = "check"  # measure the model now (at level `sparsity`) and report the verdict
RISE = "rise"  # cut to `sparsity` (and, with `last`, train on with those zeros)
HOLD = "hold"  # stop cutting: the rest of the budget fine-tunes these zeros
ROLLBACK = "rollback"  # back to the last good state, which the rest fine-tunes
RESTART = "restart"  # back to the last good state at the user's learning rate; ask again
STOP = "stop"  # back to the last good state, and end `fit` (nothing to fine-tune)
KINDS = (WAIT, CHECK, RISE, HOLD, ROLLBACK, RESTART, STOP)


@dataclasses.dataclass(frozen=True)
class Action:
    """A policy's answer.

    Attributes:
        kind: One of `KINDS`.
        sparsity: For `RISE`: the sparsity to cut to. For `CHECK`: the
            level checked (None: the model as it is, at the end).
        last: For `RISE`: the last cut; the rest of the budget trains with
            these zeros.
        stopped: For `ROLLBACK`/`STOP`: the shrink stopped short of where it
            was going (`ShrinkResult.stopped_at` records when).
        reason: Why, for the log.
    """

    kind: str
    sparsity: float | None = None
    last: bool = False
    stopped: bool = False
    reason: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Invalid action kind {self.kind!r}: expected one of {KINDS}.")


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the callback tells its policy at a decision point.

    Attributes:
        step: Training steps since the shrink began.
        total_steps: The budget in steps (an estimate during a first epoch
            of unknown length).
        progress: `step / total_steps`, in [0, 1] (0 while the budget is
            unknown).
        sparsity: Fraction of the covered weights (or units) that are zero.
        good_sparsity: The same, in the last good state (the one a
            rollback returns to).
        rate_raised: Whether the shrink runs above the user's learning rate.
        drift: How far the model's predictions moved from the start, without
            labels; given only when the policy's `needs_drift()` said so.
        final: The budget is spent: the last decision.
        budget_known: Whether `total_steps` is the budget; False during a
            first epoch of unknown length, where it is the steps so far.
    """

    step: int
    total_steps: int
    progress: float
    sparsity: float = 0.0
    good_sparsity: float = 0.0
    rate_raised: bool = False
    drift: float | None = None
    final: bool = False
    budget_known: bool = True


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one check of the model on validation data.

    Attributes:
        value: The checked metric now.
        worse: How much worse than at the start, in the tolerance's units,
            beyond noise.
        held: Within the tolerance, and every guard holds.
        ahead: Held, and better than at the start by at least `SKIP_GAIN`
            beyond noise (the climb may skip a level).
    """

    value: float
    worse: float
    held: bool
    ahead: bool = False


# How much better than at the start (beyond noise, in the tolerance's
# units) a level that held must be for the next rise to skip a level. A
# constant, not the tolerance: a level that holds at one tolerance holds at
# every looser one with the same skip, so on the same model and seed a
# looser tolerance climbs the same path at least as far (a skip that needed
# a gain of the tolerance fired at 0.05 and not at 0.1, which then ended
# lower). 0.01: the default tolerance, whose climbs it leaves as they were.
SKIP_GAIN = 0.01


def judge(value: float, worse: float, gain: float, tolerance: float, guard_holds: bool = True) -> Verdict:
    """The verdict of a check that measured `value`, `worse` than the start
    and with `gain` over it (each beyond noise, in the tolerance's units):
    held within `tolerance` (and by the guard, if any); ahead by
    `SKIP_GAIN`. A non-finite measure compares False: it fails."""
    held = bool(worse <= tolerance) and bool(guard_holds)
    return Verdict(value, worse, held, ahead=held and bool(gain >= SKIP_GAIN))
