"""Where the shrink goes: policies that `ShrinkPhase` asks at every cut.

A policy is to the shrink what a `LearningRateSchedule` is to an optimizer:
the callback runs the cuts, the holds, the snapshots and the checks; the
policy decides. `SparsityTarget` ramps to a sparsity you choose;
`ToleranceClimb` climbs levels while a validation check holds. Write your
own by subclassing `ShrinkPolicy`: its `decide` maps an `Observation` to an
`Action` (see `decisions`), and, if it ever checks, `checked` maps the
`Verdict` of that check to the next action.
"""

from __future__ import annotations

from keras_regkit import _validate
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning.granularity import Granularity
from keras_regkit.shrinking import data as data_lib
from keras_regkit.shrinking import learning_rate as learning_rate_lib
from keras_regkit.shrinking.climb import Climb
from keras_regkit.shrinking.decisions import RISE, Action, Observation, Verdict
from keras_regkit.shrinking.guards import AgreementGuard, ValidationCheck
from keras_regkit.shrinking.ramps import CubicRamp, SparsitySchedule


class ShrinkPolicy:
    """Base class: decides, at every cut, where the shrink goes.

    Args:
        cut_every: Training steps between two decisions (and cuts).
            Defaults to 10.
        learning_rate: The optimizer's rate during the shrink: a float,
            `"auto"` (3x the current one if the optimizer has trained, the
            benchmark's best in both modes; 1x for a model with a recurrent
            layer: see `learning_rate.auto_factor`) or None (leave it). An
            optimizer that follows a schedule is left alone. Defaults to
            `"auto"`.
        score: What to cut first: `"curvature"` (`|w| · v^(1/4)`, with `v`
            the optimizer's second moment), `"magnitude"` (`|w|`) or a
            `keras_regkit.pruning.Score`. Defaults to `"curvature"`.

    Attributes:
        name: The mode's name in `ShrinkResult.mode`.
        trusts_epoch_ends: Whether the state at each epoch's end is a good
            state to go back to (else only what a check passed is).
        target: The sparsity it heads for (set by `bind`).
        check: The `ValidationCheck` its verdicts come from, or None (a
            policy that never checks).
    """

    name = "custom"
    check: ValidationCheck | None = None
    # Whether the state at every epoch's end is one to go back to (a
    # policy that checks has its own: the levels that held).
    trusts_epoch_ends = True

    def __init__(self, cut_every: int = 10, learning_rate="auto", score="curvature"):
        self.cut_every = _validate.integer("cut_every", cut_every, minimum=1)
        self.learning_rate = learning_rate_lib.validated(learning_rate)
        self.score = scores_lib.get(score)
        self.target: float | None = None

    def bind(self, granularity: Granularity) -> None:
        """Fits the policy to what the shrink cuts (its ceiling, its
        levels); raises ValueError where it cannot apply."""

    def begin(self) -> None:
        """The shrink starts: decisions start afresh."""

    def needs_drift(self) -> bool:
        """Whether the next `decide` reads `Observation.drift`."""
        return False

    def rolled_back(self) -> None:
        """The callback went back to the last good state (an action of the
        policy's, or a diverged loss)."""

    def decide(self, seen: Observation) -> Action:
        raise NotImplementedError

    def checked(self, seen: Observation, verdict: Verdict) -> Action:
        raise NotImplementedError(f"{type(self).__name__} asked for a check but takes no verdict.")

    def get_state(self) -> dict:
        """What a resumed shrink needs to decide as the uninterrupted one
        would (JSON-ready)."""
        return {}

    def set_state(self, state: dict) -> None:
        pass


class SparsityTarget(ShrinkPolicy):
    """Cuts along `schedule` to exactly `sparsity`: the sparsity mode.

    Args:
        sparsity: Target fraction of exact zeros over the covered weights
            (of dead units, for units and heads), in [0, 1] (at most an
            N:M pattern's `1 - N/M`).
        schedule: A `SparsitySchedule`. Defaults to a `CubicRamp` from the
            granularity's first cut (half the entries; none for units and
            patterns) to `sparsity`, reached at 80 % of the budget.
        **kwargs: `cut_every`, `learning_rate`, `score` (see
            `ShrinkPolicy`).

    Example:

    >>> policy = rk.shrinking.SparsityTarget(0.9)
    >>> policy.bind(rk.pruning.Weights())
    >>> [policy.decide(rk.shrinking.Observation(step, 100, step / 100)).sparsity for step in (0, 80)]
    [0.5, 0.9]
    """

    name = "sparsity"

    def __init__(self, sparsity: float, schedule: SparsitySchedule | None = None, **kwargs):
        super().__init__(**kwargs)
        self.sparsity = _validate.real("sparsity", sparsity, maximum=1.0)
        if schedule is not None and not isinstance(schedule, SparsitySchedule):
            raise TypeError(
                "Invalid value for argument `schedule`: expected a "
                f"keras_regkit.shrinking.SparsitySchedule. Received: schedule={schedule!r}")
        self.user_schedule = self.schedule = schedule
        self.target = self.sparsity

    def bind(self, granularity):
        _validate.real("sparsity", self.sparsity, maximum=granularity.ceiling)
        self.schedule = self.user_schedule or CubicRamp(self.sparsity, initial=granularity.first_cut)

    def decide(self, seen):
        if seen.final:
            return Action(RISE, self.sparsity, last=True)  # exact, whatever the cadence left
        sparsity = self.schedule(seen.progress)
        return Action(RISE, sparsity, last=sparsity >= self.schedule.target)


class ToleranceClimb(ShrinkPolicy):
    """Climbs fixed levels of sparsity while a validation check holds: the
    tolerance mode (see `climb` for the rules).

    Args:
        tolerance: How much worse the validation metric may get: top-1
            accuracy (absolute), or `monitor`'s (see `ValidationCheck`).
            Defaults to 0.01.
        monitor: None (top-1 accuracy) or a validation metric's log name
            (`"val_mae"`).
        mode: `"auto"`, `"min"` or `"max"`: the direction of `monitor`.
        guard: Optional `AgreementGuard` (with its `inputs`) that each
            level must also hold.
        levels: The candidate sparsities, each in (0, 1], tested in rising
            order, once each (`max_sparsity` is added as the last). Defaults to the
            granularity's: 0.8 to 0.995 of entries, 0.25 to 0.95 of units.
        max_sparsity: The last level, in (0, 1]. Defaults to 0.995 (0.95 of units; an
            N:M pattern's `1 - N/M`).
        **kwargs: `cut_every`, `learning_rate`, `score` (see
            `ShrinkPolicy`).
    """

    name = "tolerance"
    trusts_epoch_ends = False

    def __init__(self, tolerance: float = 0.01, monitor: str | None = None, mode: str = "auto",
                 guard: AgreementGuard | None = None, levels=None, max_sparsity: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.tolerance = _validate.real("tolerance", tolerance, maximum=1.0)
        self.check = ValidationCheck(self.tolerance, monitor, mode, guard=guard)
        if guard is not None and guard.inputs is None:
            raise ValueError(
                "A `guard` needs its reference inputs (the training inputs, or a sample of them), on "
                "which it compares the model with its start: `AgreementGuard(..., inputs=x)`; "
                "`keras_regkit.shrink` passes its `x`.")
        if guard is not None and data_lib.read_once(guard.inputs):
            raise ValueError(
                "Invalid value for argument `guard`: its inputs are an iterator or generator, which "
                "the guard's sampling would use up before `fit` reads them. Pass arrays, a "
                f"tf.data.Dataset or a keras.utils.PyDataset. Received: inputs={guard.inputs!r}")
        if levels is not None and (isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__")):
            raise TypeError(
                "Invalid value for argument `levels`: expected a list of sparsities in (0, 1]. "
                f"Received: levels={levels!r}")
        self.user_levels = None if levels is None else [_sparsity("levels", lv) for lv in levels]
        self.max_sparsity = None if max_sparsity is None else _sparsity("max_sparsity", max_sparsity)
        self.levels = self.initial = self.climb = None  # set by `bind` and `begin`

    def bind(self, granularity):
        top = granularity.top_level if self.max_sparsity is None else self.max_sparsity
        self.target = _validate.real("max_sparsity", top, maximum=granularity.ceiling)
        levels = granularity.levels if self.user_levels is None else self.user_levels
        self.levels = tuple(sorted({lv for lv in levels if 0 < lv < self.target} | {self.target}))
        self.initial = CubicRamp(self.target, initial=granularity.first_cut)(0.0)  # the first cut

    def begin(self):
        self.climb = Climb(self.levels, initial=self.initial, cut_every=self.cut_every)

    def needs_drift(self):
        return self.climb.needs_drift()

    def decide(self, seen):
        return self.climb.decide(seen)

    def checked(self, seen, verdict):
        return self.climb.checked(seen, verdict)

    def rolled_back(self):
        self.climb.rolled_back()

    def get_state(self):
        return self.climb.get_state()

    def set_state(self, state):
        self.climb.set_state(state)


def policy_for(sparsity, tolerance, policy, monitor) -> ShrinkPolicy:
    """The policy that `sparsity`, `tolerance` or `policy` asks for
    (`ShrinkPhase`'s arguments; one of the three, or none: the tolerance mode)."""
    given = {name: value for name, value in
             (("sparsity", sparsity), ("tolerance", tolerance), ("policy", policy)) if value is not None}
    if len(given) > 1:
        raise ValueError(
            "Give one of `sparsity` (a target), `tolerance` (an accuracy limit) and `policy`, not "
            f"several. Received: {', '.join(f'{k}={v!r}' for k, v in given.items())}")
    if policy is None:
        return SparsityTarget(sparsity) if sparsity is not None else ToleranceClimb(
            0.01 if tolerance is None else tolerance, monitor=monitor)
    if not isinstance(policy, ShrinkPolicy):
        raise TypeError("Invalid value for argument `policy`: expected a keras_regkit.shrinking.ShrinkPolicy "
                        f"(SparsityTarget, ToleranceClimb or your own). Received: policy={policy!r}")
    if monitor is not None and policy.check is not None and policy.check.monitor != monitor:
        raise ValueError(
            f"Give `monitor` to the policy that checks it: {type(policy).__name__}(..., monitor={monitor!r}). "
            f"Received: monitor={monitor!r} and a policy checking {policy.check.name!r}")
    return policy


def _sparsity(name: str, value) -> float:
    """A level of the climb: a sparsity in (0, 1] (a level of 0 cuts nothing to check)."""
    if _validate.real(name, value, maximum=1.0) == 0:
        raise ValueError(f"Invalid value for argument `{name}`: expected a sparsity in (0, 1]. Received: {name}={value}")
    return float(value)
