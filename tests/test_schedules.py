import numpy as np
import pytest

from keras_regkit.regularizers import L1
from keras_regkit.schedules import DelayedRamp

from conftest import assert_refused_and_unchanged, assert_round_trip, right_checks, row, run_with_fixtures


def reference(step, target, delay, ramp, initial):
    if step < delay:
        return initial
    if ramp == 0 or step >= delay + ramp:
        return target
    return initial + (target - initial) * (step - delay) / ramp


@pytest.mark.parametrize("target,delay,ramp,initial", [(1e-3, 10, 20, 0.0), (0.5, 0, 4, 0.1), (0.2, 3, 0, 0.0), (0.0, 2, 2, 1.0)])
def test_values_match_reference(target, delay, ramp, initial):
    schedule = DelayedRamp(target, delay, ramp, initial)
    steps = range(0, delay + ramp + 5)
    got = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(got, [reference(s, target, delay, ramp, initial) for s in steps], rtol=1e-6)


def test_works_as_a_strength_and_round_trips():
    schedule = assert_round_trip(DelayedRamp(0.1, 5, 10, initial=0.01))
    reg = L1(schedule, step=10)
    assert reg.current_strengths()["alpha"] == pytest.approx(0.055)


@pytest.mark.parametrize("kwargs,error", [
    ({"target": -1.0}, ValueError),
    ({"target": float("nan")}, ValueError),
    ({"delay_steps": -3}, ValueError),
    ({"ramp_steps": 2.5}, TypeError),
    ({"initial": "0"}, TypeError),
    # Beyond float32's largest: the penalty it drives would be inf.
    ({"target": 1e300}, ValueError),
    ({"initial": 3.5e38}, ValueError),
])
def test_rejects_bad_arguments_naming_them(kwargs, error):
    args = {"target": 0.1, "delay_steps": 1, "ramp_steps": 1, **kwargs}
    (name, value), = kwargs.items()
    with pytest.raises(error, match=f"argument `{name}`.*Received: {name}="):
        DelayedRamp(**args)


def test_from_config_rejects_unknown_keys():
    config = DelayedRamp(0.1, 1, 1).get_config()
    with pytest.raises(ValueError, match=r"unknown keys \['warmup'\]. Valid keys"):
        DelayedRamp.from_config({**config, "warmup": 3})


@pytest.mark.parametrize("ramp", [0, 4])
def test_steps_past_float32_integers_are_exact(ramp):
    # float32(2**24 + 1) == 2**24: a float32 step would put the switch one
    # step early (ramp 0) or miss the first quarter of the ramp (ramp 4).
    delay = 2**24 + 1
    schedule = DelayedRamp(1.0, delay, ramp)
    values = [float(schedule(np.int64(s))) for s in (delay - 1, delay, delay + 1)]
    assert values == ([0.0, 1.0, 1.0] if ramp == 0 else [0.0, 0.0, 0.25])
    assert L1(schedule, step=delay + 1).current_strengths()["alpha"] == values[2]


# -- bad and unusual input: the tables' helpers are in conftest -----------------

BAD_INPUT = [
    # Negative targets and steps, fractional steps.
    row("ramp-target-negative", lambda m: DelayedRamp(-1.0, 10, 10), ValueError, "target"),
    row("ramp-delay-float", lambda m: DelayedRamp(0.1, 1.5, 10), TypeError, "delay_steps"),
    row("ramp-ramp-negative", lambda m: DelayedRamp(0.1, 10, -1), ValueError, "ramp_steps"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_delayed_ramp_is_exact_past_2_24_steps():
    # float32 holds 2**24 + 1 as 2**24: the ramp would switch on a step early.
    ramp = DelayedRamp(1.0, delay_steps=2**24 + 1, ramp_steps=0)
    assert float(ramp(2**24)) == 0.0 and float(ramp(2**24 + 1)) == 1.0
    assert L1(ramp, step=2**24).current_strengths() == {"alpha": 0.0}


RIGHT = right_checks(right_delayed_ramp_is_exact_past_2_24_steps)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
