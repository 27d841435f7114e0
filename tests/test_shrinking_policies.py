"""The shrink's policies (`shrinking/policies.py`): what each decides, bound
to a granularity; and a policy of the user's own, run by `ShrinkPhase`."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.shrinking import ShrinkPolicy, SparsityTarget, ToleranceClimb
from keras_regkit.shrinking.decisions import HOLD, RISE, Action, Observation


def seen(progress, final=False):
    return Observation(step=int(progress * 100), total_steps=100, progress=progress, final=final)


def test_the_sparsity_target_follows_its_ramp_then_holds_and_ends_exactly_at_its_target():
    policy = SparsityTarget(0.9)
    policy.bind(rk.pruning.Weights())
    ramp = rk.shrinking.CubicRamp(0.9, initial=0.5)
    for progress in (0.0, 0.3, 0.6):
        assert policy.decide(seen(progress)) == Action(RISE, ramp(progress))
    assert policy.decide(seen(0.8)) == Action(RISE, 0.9, last=True)
    assert policy.decide(seen(1.0, final=True)) == Action(RISE, 0.9, last=True)


@pytest.mark.parametrize("granularity, first, top, levels", [
    ("weight", 0.5, 0.995, (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)),
    ("unit", 0.0, 0.95, (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    ("head", 0.0, 0.95, (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    ("2:4", 0.0, 0.5, (0.5,)),
    ("1:8", 0.0, 0.875, (0.8, 0.875)),
])
def test_each_granularity_gives_the_policies_its_first_cut_ceiling_and_levels(granularity, first, top, levels):
    target = SparsityTarget(min(top, 0.5))
    target.bind(rk.pruning.granularity.get(granularity))
    assert target.decide(seen(0.0)).sparsity == pytest.approx(min(first, 0.5))
    climb = ToleranceClimb(0.01)
    climb.bind(rk.pruning.granularity.get(granularity))
    assert climb.target == pytest.approx(top) and climb.levels == pytest.approx(levels)
    assert climb.initial == pytest.approx(first)


def test_user_levels_and_a_lower_ceiling_are_kept_apart_from_the_defaults():
    climb = ToleranceClimb(0.01, levels=(0.3, 0.6, 0.99), max_sparsity=0.9)
    climb.bind(rk.pruning.Units())
    assert climb.levels == (0.3, 0.6, 0.9)  # the levels above the ceiling go, the ceiling is the last
    climb.bind(rk.pruning.Weights())  # bound again: from the user's levels, not the last binding's
    assert climb.levels == (0.3, 0.6, 0.9)


def test_a_target_bound_again_ramps_from_the_new_granularitys_first_cut():
    policy = SparsityTarget(0.4)
    policy.bind(rk.pruning.Weights())
    assert policy.decide(seen(0.0)).sparsity == pytest.approx(0.4)  # its first cut, half, is above 0.4
    policy.bind(rk.pruning.Units())
    assert policy.decide(seen(0.0)).sparsity == pytest.approx(0.0)


class OneCut(ShrinkPolicy):
    """Cuts to `sparsity` at the first decision, then trains on."""

    name = "one cut"

    def __init__(self, sparsity):
        super().__init__(score="magnitude", learning_rate=None)
        self.sparsity, self.target, self.asked = sparsity, sparsity, 0

    def decide(self, seen):
        self.asked += 1
        return Action(RISE, self.sparsity) if seen.step == 0 else Action(HOLD)


class Watcher(ShrinkPolicy):
    """Records what each decision saw; never cuts."""

    name = "watcher"

    def __init__(self):
        super().__init__(cut_every=4, score="magnitude", learning_rate=None)
        self.seen = []

    def decide(self, seen):
        self.seen.append(seen)
        return Action(RISE, 0.0)


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # Keras, at the end of an epoch of unknown length
def test_a_first_epoch_of_unknown_length_is_observed_with_its_budget_unknown_and_the_last_step_decided_once():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda *_: True).batch(8)  # 16 steps, length unknown
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    policy = Watcher()
    phase = rk.callbacks.ShrinkPhase(start_epoch=0, policy=policy)
    with phase:
        model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[phase])
    known = [(s.step, s.budget_known, s.total_steps) for s in policy.seen]
    assert known[:5] == [(0, False, 1), (4, False, 4), (8, False, 8), (12, False, 12), (16, False, 16)]
    # The budget's last step is decided once, by the end's decision.
    assert known[5:] == [(step, True, 32) for step in (20, 24, 28, 32)] and policy.seen[-1].final


def test_shrinkphase_runs_a_policy_of_the_users_own():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    policy = OneCut(0.4)
    phase = rk.callbacks.ShrinkPhase(start_epoch=0, policy=policy, validation_data=(x, y))
    with phase:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[phase])  # 12 steps
    kernels = [w for w in model.get_weights() if w.ndim == 2]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.4, abs=1 / 96)
    assert policy.asked == 3  # the start, the 10th step (hold: no more asking), and the end
    assert phase.result.mode == "one cut" and phase.result.outcome == "pruned" and phase.result.cuts == 1
