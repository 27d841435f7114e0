"""The shrink as a whole (`ShrinkPhase`, `shrink`): each promise is checked on
the weights themselves, not only on the reported outcome; and the input each
refuses."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import ShrinkPhase
from keras_regkit.pruning.hold import MASK_NAME, held_masks
from keras_regkit.shrinking import (
    AgreementGuard, CubicRamp, Plateau, SparsityTarget, ToleranceClimb, ValidationCheck)

from conftest import (
    assert_model_unchanged,
    assert_refused_and_unchanged,
    compiled,
    infinite_dataset,
    model_state,
    model_under_test,
    right_checks,
    row,
    run_with_fixtures,
    tiny_data,
)


def classification_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def trained_classifier(units=32, optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(units, activation="relu", name="hidden"),
        keras.layers.Dense(2, name="out"),
    ])
    model.compile(optimizer or keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = classification_data()
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model


def kernels(model):
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables if len(v.shape) == 2]


def held(model):
    """The weights whose zeros the next train step holds."""
    return [variable for variable, _ in held_masks(model)]


def learning_rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def assert_same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


class Spy(keras.callbacks.Callback):
    """Records, per step of the shrink, the learning rate, the kernels and
    which kernel entries are zero."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({"lr": learning_rate(self.model), "kernels": kernels(self.model)})


def test_sparsity_mode_reaches_exactly_the_target_with_zeros_held_through_training():
    model = trained_classifier()
    x, y = classification_data()
    spy = Spy()
    result = rk.shrink(model, x, y, sparsity=0.9, epochs=4, batch_size=32, cut_every=4, callbacks=[spy])
    total = sum(k.size for k in kernels(model))
    zeros = sum(int((k == 0).sum()) for k in kernels(model))
    assert zeros == round(0.9 * total)
    assert result.sparsity == pytest.approx(zeros / total) and result.outcome == "pruned"
    # Zeros are exact after every optimizer step, and once made they stay.
    zero_masks = [np.concatenate([(k == 0).ravel() for k in s["kernels"]]) for s in spy.steps]
    for before, after in zip(zero_masks, zero_masks[1:]):
        assert (after >= before).all()
    # The sparsity climbed along the ramp (several cuts), and training moved
    # the surviving weights between them.
    assert zero_masks[0].mean() == pytest.approx(CubicRamp(0.9, initial=0.5)(0.0), abs=0.01)
    assert result.cuts > 3
    assert not np.array_equal(spy.steps[1]["kernels"][0], spy.steps[2]["kernels"][0])
    # The shrink's learning rate during, the user's after; nothing held after.
    assert spy.steps[0]["lr"] == pytest.approx(3e-2)
    assert learning_rate(model) == pytest.approx(1e-2)
    assert held(model) == [] and model.losses == []


def test_cut_is_global_across_layers():
    model = trained_classifier()
    x, y = classification_data()
    rk.shrink(model, x, y, sparsity=0.8, epochs=1, batch_size=32, score="magnitude")
    hidden, out = kernels(model)
    # One threshold for both: the layers end at different sparsities.
    assert (hidden == 0).mean() != pytest.approx((out == 0).mean(), abs=0.02)


def test_the_optimizers_second_moment_changes_what_is_cut():
    x, y = classification_data()
    cut = {}
    for score in ("magnitude", "curvature"):
        model = trained_classifier()
        rk.shrink(model, x, y, sparsity=0.7, epochs=1, batch_size=32, score=score, learning_rate=None,
                  cut_every=1000)
        cut[score] = np.concatenate([(k == 0).ravel() for k in kernels(model)])
    assert cut["magnitude"].sum() == cut["curvature"].sum()
    assert (cut["magnitude"] != cut["curvature"]).any()


class StepWeights(keras.callbacks.Callback):
    """The weights at every step of `fit`, where this callback is listed."""

    def __init__(self):
        super().__init__()
        self.weights, self.step = {}, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.weights[self.step] = self.model.get_weights()


def zero_fraction(model):
    return float(np.mean(np.concatenate([(k == 0).ravel() for k in kernels(model)])))


class FailsAbove(ValidationCheck):
    """A validation metric that falls past a known sparsity: every check
    above `limit` fails (as a model would whose accuracy collapses there)."""

    def __init__(self, limit, final_fails=False):
        super().__init__(tolerance=0.01)
        self.limit, self.final_fails, self.looks = limit, final_fails, []

    def start(self, model, validation_data, steps=None, report_only=False):
        self.data, self.baseline = validation_data, 1.0
        return 1.0

    def measure(self, model):
        sparsity = zero_fraction(model)
        worse = 1.0 if sparsity > self.limit + 1e-6 else 0.0
        if self.final_fails and getattr(self, "ending", False):
            worse = 1.0
        self.looks.append((sparsity, model.get_weights()))
        return 1.0 - worse, worse

    def drift(self, model):
        return 0.0  # no progress: each level is checked after `_PLATEAU` waits


class SparsityPerStep(keras.callbacks.Callback):
    """The covered kernels' zero fraction and the learning rate after every
    training step."""

    def __init__(self):
        super().__init__()
        self.values, self.rates = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(zero_fraction(self.model))
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def shrink_with_check(check, epochs=10, levels=(0.5, 0.8, 0.9, 0.95), callbacks=()):
    model = trained_classifier()
    x, y = classification_data()
    phase = ShrinkPhase(start_epoch=0, validation_data=classification_data(seed=1),
                        policy=ToleranceClimb(0.01, levels=levels, max_sparsity=0.98, cut_every=2))
    phase.check = phase.policy.check = check
    with phase:
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[phase, *callbacks])
    return model, phase.result


@pytest.mark.parametrize("limit", [0.5, 0.9])
def test_tolerance_mode_ends_at_the_sparsest_level_that_passed(limit):
    check = FailsAbove(limit)
    candidates = (0.5, 0.9, 0.95)  # three rises fit in the budget
    model, result = shrink_with_check(check, levels=candidates)
    # Levels tried in rising order; the one above the limit failed, and
    # none above it was tried.
    levels = [level for level, _, _ in result.levels]
    assert levels == sorted(levels) and max(levels) == min(lv for lv in candidates if lv > limit)
    assert all(held == (level <= limit) for level, _, held in result.levels)
    assert levels.count(max(levels)) == 2  # the failed level's second check failed too
    assert result.outcome == "stopped by the check" and result.rollbacks == 1
    # It ends at exactly that level, fine-tuned: the zeros are the level's,
    # the other weights moved on after its check.
    assert zero_fraction(model) == pytest.approx(limit, abs=1 / 256)
    # The look that passed the level: the one before the first that failed.
    first_failure = next(i for i, (sparsity, _) in enumerate(check.looks) if sparsity > limit + 1e-6)
    passed = check.looks[first_failure - 1][1]
    assert not np.array_equal(model.get_weights()[0], passed[0])
    assert ((passed[0] == 0) == (model.get_weights()[0] == 0)).all()
    assert held(model) == []


def test_a_climb_that_never_fails_stops_where_no_rise_fits_before_the_reserve_and_keeps_that_level():
    check = FailsAbove(1.0)  # every level holds
    candidates = (0.5, 0.8, 0.9, 0.95)
    model, result = shrink_with_check(check, levels=candidates)
    levels = [level for level, _, _ in result.levels]
    # Not every level: a rise that could not end before the last 15 % of
    # the budget is not begun, so nothing is cut past the last check and
    # nothing is rolled back; the level fine-tunes instead.
    assert levels == list(candidates[:len(levels)]) and levels[-1] < 0.98
    assert all(held for _, _, held in result.levels)
    assert result.rollbacks == 0 and result.outcome == "pruned"
    assert zero_fraction(model) == pytest.approx(levels[-1], abs=1 / 256)


class FailsFirstLookAt(FailsAbove):
    """Every look holds but the first at `level` (a level checked before
    it recovered); records the optimizer's step of each look."""

    def __init__(self, level):
        super().__init__(limit=1.0)
        self.level, self.steps = level, []

    def measure(self, model):
        super().measure(model)
        self.steps.append(int(keras.ops.convert_to_numpy(model.optimizer.iterations)))
        at_level = [abs(sparsity - self.level) < 1 / 256 for sparsity, _ in self.looks]
        return (0.0, 1.0) if at_level[-1] and sum(at_level) == 1 else (1.0, 0.0)


def test_a_level_that_fails_its_first_check_trains_on_and_its_second_check_decides():
    check = FailsFirstLookAt(0.8)
    model, result = shrink_with_check(check, levels=(0.5, 0.8, 0.9))
    assert [(level, held) for level, _, held in result.levels] == [(0.5, True), (0.8, False), (0.8, True)]
    assert result.rollbacks == 0 and result.outcome == "pruned"
    assert zero_fraction(model) == pytest.approx(0.8, abs=1 / 256)
    # Between its looks the level trained on, its zeros held.
    first, second = check.looks[1][1][0], check.looks[2][1][0]
    assert not np.array_equal(first, second) and ((first == 0) == (second == 0)).all()
    # The second look: half of the budget left after the first (to the
    # cadence of the checks, every 2 steps).
    start = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) - result.steps
    done = check.steps[1] - start
    assert abs((check.steps[2] - start) - (done + 0.5 * (result.steps - done))) <= 2


class AheadAt(FailsAbove):
    """Every level holds; at `level` the model is better than at the start
    by `gain` beyond noise."""

    def __init__(self, level, gain):
        super().__init__(limit=1.0)
        self.level, self.ahead_by = level, gain

    def measure(self, model):
        value, worse = super().measure(model)
        self.gain = self.ahead_by if abs(self.looks[-1][0] - self.level) < 1 / 256 else 0.0
        return value, worse


@pytest.mark.parametrize("gain, second", [(0.01, 0.9), (0.009, 0.8)])
def test_a_level_that_holds_ahead_of_the_start_by_the_tolerance_skips_the_next(gain, second):
    # A model SKIP_GAIN (0.01, the tolerance here) better than at the start
    # has room for two levels' losses, and the next rise goes two levels up.
    model, result = shrink_with_check(AheadAt(0.5, gain), levels=(0.5, 0.8, 0.9, 0.95))
    assert [level for level, _, _ in result.levels][:2] == [0.5, second]
    assert zero_fraction(model) == pytest.approx(result.levels[-1][0], abs=1 / 256)


@pytest.mark.parametrize("optimizer", ["trained", "fresh"])
def test_a_first_level_that_never_passes_ends_at_exactly_the_starting_weights_and_stops_fit(optimizer):
    model = trained_classifier()
    score = "curvature"
    if optimizer == "fresh":  # compiled again, never stepped: the shrink keeps its rate
        model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        score = "magnitude"  # no second moment yet
    start = model.get_weights()
    x, y = classification_data()
    phase = ShrinkPhase(start_epoch=0, validation_data=classification_data(seed=1),
                        policy=ToleranceClimb(0.01, cut_every=2, score=score))
    phase.check = phase.policy.check = FailsAbove(0.0)
    epochs = EpochEnds()
    with phase:
        model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[phase, epochs])
    assert phase.result.outcome == "baseline" and phase.result.sparsity == 0.0
    assert_same_weights(model.get_weights(), start)
    # A trained optimizer's first level was looked at twice: at the raised
    # learning rate, then climbing again at the model's own; a fresh one's,
    # never raised, once. No other level was tried.
    first = phase.policy.levels[0]
    looks = 2 if optimizer == "trained" else 1
    assert [(level, held) for level, _, held in phase.result.levels] == [(first, False)] * looks
    assert len(epochs.weights) < 10  # fit stopped: nothing to fine-tune
    assert held(model) == []


class FailsFirstLook(FailsAbove):
    """Fails the first look, passes the rest (a model that the raised
    learning rate shook)."""

    def measure(self, model):
        super().measure(model)
        return (0.0, 1.0) if len(self.looks) == 1 else (1.0, 0.0)


def test_a_first_level_that_fails_at_the_raised_rate_climbs_again_at_the_models_own():
    model = trained_classifier()
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    x, y = classification_data()
    steps = SparsityPerStep()
    phase = ShrinkPhase(start_epoch=0, validation_data=classification_data(seed=1),
                        policy=ToleranceClimb(0.01, levels=(0.8, 0.9), max_sparsity=0.95, cut_every=2))
    phase.check = phase.policy.check = FailsFirstLook(limit=1.0)
    with phase:
        model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[phase, steps])
    looks = [(level, held) for level, _, held in phase.result.levels]
    assert looks[:3] == [(0.8, False), (0.8, True), (0.9, True)]
    # Back at the start after the first look (the one step whose sparsity
    # falls, to none), and from there on at the model's own rate.
    sparsity = np.array(steps.values)
    fall = np.flatnonzero(sparsity[1:] < sparsity[:-1])
    assert len(fall) == 1 and sparsity[fall[0] + 1] == 0.0
    rates = np.array(steps.rates)
    np.testing.assert_allclose(rates[:fall[0] + 1], 3 * rate, rtol=1e-6)
    np.testing.assert_allclose(rates[fall[0] + 1:], rate, rtol=1e-6)
    assert phase.result.sparsity >= 0.9 - 1 / 256
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(rate)


def test_a_final_model_that_fails_the_check_goes_back_to_the_level_as_it_passed():
    check = FailsAbove(0.8, final_fails=True)

    class MarkEnding(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            check.ending = True

    # Listed before the phase, so the mark is set before the phase ends.
    model = trained_classifier()
    x, y = classification_data()
    phase = ShrinkPhase(start_epoch=0, validation_data=classification_data(seed=1),
                        policy=ToleranceClimb(0.01, levels=(0.5, 0.8, 0.9), max_sparsity=0.98, cut_every=2))
    phase.check = phase.policy.check = check
    with phase:
        model.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[MarkEnding(), phase])
    first_failure = next(i for i, (sparsity, _) in enumerate(check.looks) if sparsity > 0.8 + 1e-6)
    assert_same_weights(model.get_weights(), check.looks[first_failure - 1][1])
    assert zero_fraction(model) == pytest.approx(0.8, abs=1 / 256)
    assert phase.result.rollbacks == 2


def test_tolerance_mode_on_a_regression_model_stops_where_its_metric_says():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(3e-3), "mse", metrics=["mae"])
    model.fit(x[:384], y[:384], epochs=40, batch_size=32, verbose=0)
    validation = (x[384:], y[384:])
    start_mae = model.evaluate(*validation, verbose=0, return_dict=True)["mae"]
    result = rk.shrink(model, x[:384], y[:384], tolerance=0.2, monitor="val_mae", validation_data=validation,
                       epochs=10, batch_size=32, cut_every=4, levels=(0.25, 0.5, 0.75, 0.9, 0.95))
    assert result.monitor == "val_mae" and result.baseline == pytest.approx(start_mae, rel=1e-4)
    # Each check held exactly when the MAE stayed within 20 % of the start.
    assert result.levels and all(held == (mae <= 1.2 * start_mae) for _, mae, held in result.levels)
    assert any(not held for _, _, held in result.levels)  # 99.5 % of this model's weights is too many
    final_mae = model.evaluate(*validation, verbose=0, return_dict=True)["mae"]
    assert final_mae <= 1.2 * start_mae and result.final == pytest.approx(final_mae, rel=1e-4)
    assert result.sparsity == pytest.approx(max(level for level, _, held in result.levels if held), abs=0.01)


class Sabotage(keras.callbacks.Callback):
    """At a chosen epoch and batch: NaN kernels, then optionally raises."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action, self.current = epoch, action, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 2:
            kernel = self.model.get_layer("hidden").kernel
            kernel.assign(keras.ops.full(kernel.shape, float("nan")))
            if self.action != "nan":
                raise self.action


def optimizer_state(model):
    """The optimizer's variables by path, its step count among them; not its
    learning rate (the shrink's own while it runs), nor the masks of held
    zeros that ride in it under JAX (`HoldZeros`)."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables
            if v.name not in ("learning_rate", MASK_NAME)}


class EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights, self.optimizer = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()
        self.optimizer[epoch] = optimizer_state(self.model)


def test_nan_loss_rolls_back_to_the_last_epochs_weights_and_goes_on():
    model = trained_classifier()
    x, y = classification_data()
    ends = EpochEnds()
    # Listed after the phase: it sees the weights the phase kept.
    result = rk.shrink(model, x, y, sparsity=0.8, epochs=4, batch_size=32,
                       callbacks=[Sabotage(2, "nan"), ends])
    assert result.rollbacks == 1
    assert_same_weights(ends.weights[2], ends.weights[1])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert sum(int((k == 0).sum()) for k in kernels(model)) == round(0.8 * (8 * 32 + 32 * 2))


def test_a_snapshot_writes_over_the_arrays_it_is_lent_and_keeps_no_view_of_the_model():
    from keras_regkit.shrinking.snapshots import Snapshot

    model = trained_classifier()
    x, y = classification_data()
    lent = Snapshot.take(model, step=0, sparsity=0.0)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # new weights and slots
    taken = Snapshot.take(model, step=8, sparsity=0.5, reuse=lent)
    assert all(a is b for a, b in zip(taken.weights + taken.slots, lent.weights + lent.slots))
    assert_same_weights(taken.weights, model.get_weights())
    now = optimizer_state(model)
    slots = [now[path] for path in now if "iteration" not in path]
    assert len(slots) == len(taken.slots) and all(np.array_equal(a, b) for a, b in zip(taken.slots, slots))
    assert (taken.step, taken.sparsity) == (8, 0.5)
    expected = [w.copy() for w in taken.weights]
    model.set_weights([w + 1 for w in model.get_weights()])
    assert_same_weights(taken.weights, expected)  # copies, not views of the model


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("callback failed")], ids=["interrupt", "exception"])
def test_interrupted_shrink_ends_at_the_last_good_weights(error):
    model = trained_classifier()
    x, y = classification_data()
    ends = EpochEnds()
    with pytest.raises(type(error)):
        rk.shrink(model, x, y, sparsity=0.8, epochs=4, batch_size=32, callbacks=[ends, Sabotage(2, error)])
    assert_same_weights(model.get_weights(), ends.weights[1])
    # The optimizer as it was then too: its slots and its step count.
    now, then = optimizer_state(model), ends.optimizer[1]
    assert now.keys() == then.keys() and any("iteration" in path for path in now)
    for path in now:
        np.testing.assert_array_equal(now[path], then[path], err_msg=path)
    assert held(model) == [] and model.losses == []
    assert learning_rate(model) == pytest.approx(1e-2)


def test_unit_granularity_cuts_whole_hidden_units_and_leaves_the_outputs():
    model = trained_classifier()
    x, y = classification_data()
    result = rk.shrink(model, x, y, sparsity=0.5, epochs=3, batch_size=32, granularity="unit", cut_every=4)
    hidden = kernels(model)[0]
    dead = (hidden == 0).all(axis=0)
    assert ((hidden == 0).any(axis=0) == dead).all()  # zeros come in whole units
    assert dead.sum() == 16 and result.dead_units["hidden"] == (16, 32)
    assert result.dead_units["out"] == (0, 2) and (kernels(model)[1] != 0).all()
    assert result.sparsity == result.unit_sparsity == 0.5
    assert "hidden 16/32" in str(result)


def test_patience_starts_the_phase_at_a_plateau_from_the_best_weights():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    # Learning rate 0: val_loss is flat from the first epoch, a plateau.
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    phase = ShrinkPhase(start_epoch=Plateau(patience=2), policy=SparsityTarget(0.5, learning_rate=None, score="magnitude"))
    model.fit(x, y, epochs=5, batch_size=32, validation_data=(xv, yv), verbose=0, callbacks=[phase])
    assert phase.result.started_at_epoch == 3  # best at epoch 0, no gain in 1 and 2
    assert phase.result.sparsity == pytest.approx(0.5, abs=1 / 320)


def test_weighted_validation_baseline_is_the_weighted_accuracy():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    weights = np.where(np.arange(len(xv)) % 2 == 0, 3.0, 0.5).astype("float32")
    hits = (np.argmax(model.predict(xv, verbose=0), axis=-1) == yv).astype(float)
    expected = float((hits * weights).sum() / weights.sum())
    assert expected != pytest.approx(hits.mean())  # the weights matter here
    result = rk.shrink(model, x, y, sparsity=0.5, validation_data=(xv, yv, weights), epochs=1, batch_size=32)
    assert result.baseline == pytest.approx(expected)
    # As Keras weighs a weighted metric.
    model.compile(model.optimizer, model.loss, weighted_metrics=["accuracy"])
    evaluated = model.evaluate(xv, yv, sample_weight=weights, verbose=0, return_dict=True)["accuracy"]
    assert result.final == pytest.approx(evaluated, abs=1e-6)


def test_infinite_dataset_with_steps_per_epoch_ends():
    tf = pytest.importorskip("tensorflow")
    model = trained_classifier()
    x, y = classification_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    result = rk.shrink(model, data, sparsity=0.6, epochs=2, steps_per_epoch=4, cut_every=2)
    assert result.steps == 8
    assert result.sparsity == pytest.approx(0.6, abs=1 / 320)


def test_tolerance_mode_takes_its_reference_inputs_from_a_dataset():
    tf = pytest.importorskip("tensorflow")
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    guard = AgreementGuard(0.05)
    result = rk.shrink(model, data, tolerance=0.05, validation_data=(xv, yv), epochs=2, cut_every=4, guard=guard)
    np.testing.assert_array_equal(guard.inputs, x)  # every input, in order, without the labels
    assert result.disagreement == guard.disagreement(model)


def test_learning_rate_schedule_is_left_alone_or_refused():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 100, 0.9)
    model = trained_classifier(optimizer=keras.optimizers.Adam(schedule))
    x, y = classification_data()
    rk.shrink(model, x, y, sparsity=0.5, epochs=1, batch_size=32)  # "auto": the schedule goes on
    with pytest.raises(ValueError, match="learning_rate=None"):
        rk.shrink(model, x, y, sparsity=0.5, epochs=1, batch_size=32, learning_rate=1e-3)
    assert held(model) == []


def test_sgd_falls_back_to_magnitude_and_says_so():
    model = trained_classifier(optimizer=keras.optimizers.SGD(0.1))
    x, y = classification_data()
    with pytest.warns(UserWarning, match="no second moment"):
        result = rk.shrink(model, x, y, sparsity=0.5, epochs=1, batch_size=32)
    assert result.sparsity == pytest.approx(0.5, abs=1 / 320)


def gen():
    yield from ()


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "needs `start_epoch`"),
    ({"start_epoch": 1, "sparsity": 0.5, "tolerance": 0.01}, ValueError, "not several"),
    ({"start_epoch": 1, "sparsity": 0.5, "policy": SparsityTarget(0.5)}, ValueError, "not several"),
    ({"start_epoch": 1, "policy": 0.5}, TypeError, "argument `policy`"),
    ({"start_epoch": 1, "sparsity": 1.5}, ValueError, "argument `sparsity`"),
    ({"start_epoch": 1, "tolerance": -1.0}, ValueError, "argument `tolerance`"),
    ({"start_epoch": 1}, ValueError, "validation_data="),
    ({"start_epoch": 1, "sparsity": 0.5, "monitor": 3}, TypeError, "argument `monitor`"),
    ({"start_epoch": 1, "policy": ToleranceClimb(monitor="val_mae"), "monitor": "val_mse"}, ValueError,
     "Give `monitor` to the policy"),
    ({"start_epoch": 1, "sparsity": 0.5, "granularity": "rows"}, ValueError, r"argument `granularity`.*'rows'"),
    ({"start_epoch": 1, "sparsity": 0.75, "granularity": "2:4"}, ValueError, r"argument `sparsity`.*0\.5"),
    ({"start_epoch": 1, "policy": ToleranceClimb(max_sparsity=0.9), "granularity": "2:4",
      "validation_data": (np.zeros((2, 8)), np.zeros(2))}, ValueError, r"argument `max_sparsity`.*0\.5"),
    ({"start_epoch": 1, "sparsity": 0.5, "validation_data": gen()}, ValueError, "read only once"),
    ({"start_epoch": 1, "sparsity": 0.5, "backup_dir": ""}, TypeError, "argument `backup_dir`"),
    ({"start_epoch": 1, "sparsity": 0.5, "layers": 3}, TypeError, "layer selector"),
    ({"start_epoch": Plateau, "sparsity": 0.5}, TypeError, r"argument `start_epoch`.*Plateau instance"),
    ({"start_epoch": 0, "tolerance": 0.1, "validation_data": ()}, ValueError, "argument `validation_data`"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ShrinkPhase(**kwargs)


@pytest.mark.parametrize("make,error,match", [
    (lambda: ToleranceClimb(tolerance=-1.0), ValueError, "argument `tolerance`"),
    (lambda: ToleranceClimb(levels=0.5), TypeError, "argument `levels`"),
    (lambda: ToleranceClimb(levels=[0.5, 2.0]), ValueError, "argument `levels`"),
    (lambda: ToleranceClimb(guard=AgreementGuard(0.1)), ValueError, "inputs=x"),
    (lambda: ToleranceClimb(guard=AgreementGuard(0.1, inputs=iter([np.zeros((2, 8))]))), ValueError,
     "iterator"),
    (lambda: ToleranceClimb(guard=0.1), TypeError, "argument `guard`"),
    (lambda: ToleranceClimb(max_sparsity=2.0), ValueError, "argument `max_sparsity`"),
    (lambda: ToleranceClimb(mode="up"), ValueError, "argument `mode`"),
    (lambda: SparsityTarget(0.5, schedule=0.5), TypeError, "argument `schedule`"),
    (lambda: SparsityTarget(0.5, score="gradient"), ValueError, "argument `score`"),
    (lambda: SparsityTarget(0.5, cut_every=0), ValueError, "argument `cut_every`"),
    (lambda: SparsityTarget(0.5, learning_rate=-1.0), ValueError, "argument `learning_rate`"),
    (lambda: SparsityTarget(0.5, learning_rate="fast"), TypeError, "argument `learning_rate`"),
    (lambda: Plateau(patience=0), ValueError, "argument `patience`"),
    (lambda: Plateau(patience=2, mode="up"), ValueError, "argument `mode`"),
    (lambda: Plateau(patience=2, monitor=None), TypeError, "argument `monitor`"),
    (lambda: rk.pruning.Weights("kernels"), ValueError, "argument `weights`"),
    (lambda: ToleranceClimb(levels=[0.0, 0.5]), ValueError, r"argument `levels`: expected a sparsity in \(0, 1\]"),
    (lambda: ToleranceClimb(levels=["0.5"]), TypeError, "argument `levels`"),
    (lambda: ToleranceClimb(max_sparsity=0.0), ValueError, r"argument `max_sparsity`.*\(0, 1\]"),
    (lambda: ToleranceClimb(tolerance=float("nan")), ValueError, "argument `tolerance`.*nan"),
    (lambda: ToleranceClimb(tolerance=1.5), ValueError, "argument `tolerance`"),
    (lambda: ToleranceClimb(monitor=""), ValueError, "argument `monitor`"),
    (lambda: ToleranceClimb(mode="min"), ValueError, "argument `mode`.*top-1"),
    (lambda: ToleranceClimb(guard=AgreementGuard), TypeError, "argument `guard`"),
    (lambda: ValidationCheck(0.1, mode="min"), ValueError, "argument `mode`"),
    (lambda: AgreementGuard(float("nan")), ValueError, "argument `max_disagreement`"),
    (lambda: AgreementGuard(0.1, samples=0), ValueError, "argument `samples`"),
    (lambda: Plateau(patience=2, monitor=""), ValueError, "argument `monitor`"),
])
def test_the_policies_and_the_trigger_reject_bad_arguments_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_shrink_in_tolerance_mode_needs_validation_data():
    model = trained_classifier()
    x, y = classification_data()
    with pytest.raises(ValueError, match="validation_data"):
        rk.shrink(model, x, y)


def test_a_start_epoch_fit_never_reaches_says_so():
    model = trained_classifier()
    x, y = classification_data()
    phase = ShrinkPhase(start_epoch=5, sparsity=0.5)
    with pytest.warns(UserWarning, match=r"start_epoch=5\) will not start: this fit runs epochs 0-2"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[phase])
    assert phase.result.outcome == "not started"


def test_auto_learning_rate_triples_only_for_an_optimizer_that_has_trained():
    model = trained_classifier()
    x, y = classification_data()
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    spy = Spy()
    rk.shrink(model, x, y, sparsity=0.5, epochs=1, batch_size=32, score="magnitude", callbacks=[spy])
    assert [step["lr"] for step in spy.steps] == pytest.approx([1e-3] * len(spy.steps))  # fresh: lr-sized steps
    spy = Spy()
    rk.shrink(model, x, y, sparsity=0.6, epochs=1, batch_size=32, callbacks=[spy])
    assert [step["lr"] for step in spy.steps] == pytest.approx([3e-3] * len(spy.steps))
    assert learning_rate(model) == pytest.approx(1e-3)


class ZerosPerStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.fractions = []

    def on_train_batch_end(self, batch, logs=None):
        self.fractions.append(zero_fraction(self.model))


def test_the_ramp_follows_its_schedule_over_the_budget_left_when_the_phase_starts_late():
    model = trained_classifier()
    x, y = classification_data()
    ramp = CubicRamp(0.9, initial=0.5)
    phase = ShrinkPhase(start_epoch=2, policy=SparsityTarget(0.9, cut_every=1, schedule=ramp))
    spy = ZerosPerStep()
    with phase:  # 6 epochs of 8 steps, the shrink in the last 4: a budget of 32 steps
        model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[phase, spy])
    total = sum(k.size for k in kernels(model))
    shrink_steps = spy.fractions[16:]
    assert spy.fractions[:16] == [0.0] * 16  # nothing before the start
    for step, fraction in enumerate(shrink_steps, start=1):
        expected = round(ramp(min(step / 32, 1.0)) * total) / total
        assert fraction == pytest.approx(expected, abs=1.5 / total), step
    assert shrink_steps[-1] == pytest.approx(0.9, abs=0.5 / total)


# -- a refused shrink changes nothing: every check on the data comes before the
# learning rate, the weights, the optimizer's slots or the constraints are
# touched (issue #30, families 1-3) ----------------------------------------------

N = 64


def data(n=N, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def trained(outputs=1):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    if outputs == 1:
        model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model = keras.Model(inputs, {"a": keras.layers.Dense(2, name="a")(hidden),
                                     "b": keras.layers.Dense(2, name="b")(hidden)})
        loss = {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    model.compile(keras.optimizers.Adam(1e-2), loss)
    x, y = data()
    model.fit(x, y if outputs == 1 else {"a": y, "b": y}, epochs=2, batch_size=16, verbose=0)
    return model


def state(model):
    """Everything a failed shrink must leave as it was."""
    return {
        "weights": model.get_weights(),
        "optimizer": [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables],
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        "constraints": [getattr(v, "constraint", None) for v in model.weights],
    }


def assert_unchanged(before, after):
    assert after["learning_rate"] == before["learning_rate"]
    assert after["constraints"] == before["constraints"]
    for key in ("weights", "optimizer"):
        assert len(after[key]) == len(before[key])
        for a, b in zip(after[key], before[key]):
            np.testing.assert_array_equal(a, b)


xv, yv = data(32, seed=1)
nan_x = xv.copy()
nan_x[3, 2] = np.nan


def with_value(array, value, dtype="float32"):
    """`array` as `dtype`, with `value` at its fourth entry."""
    array = np.array(array, dtype)
    array.reshape(-1)[3] = value
    return array

CASES = [
    # (outputs, validation_data, extra kwargs, error, what the message names)
    (1, (data(32, features=5)[0], yv), {}, ValueError, "validation_data"),           # wrong feature count
    (1, (xv, [yv, yv]), {}, ValueError, "validation_data.*2 targets"),                # a list for one output
    (1, (xv, yv[:20]), {}, ValueError, "validation_data.*same number of samples"),     # y shorter than x
    (1, (xv, yv, np.ones(5)), {}, ValueError, "validation_data.*same number of samples"),  # weights
    (2, (xv, {"a": yv}), {}, ValueError, "validation_data.*missing"),                 # a dict missing an output
    (2, (xv, {"a": yv, "b": yv, "c": yv}), {}, ValueError, "validation_data.*unknown"),
    (1, (nan_x, yv), {}, ValueError, "validation_data.*not all finite"),              # NaN inputs
    # Targets and sample weights the validation loss would fail on, after
    # training steps (issue #37: the step count moved 90 -> 93).
    (1, (xv, with_value(yv, np.nan)), {}, ValueError, "validation_data.*targets must be finite"),
    (1, (xv, with_value(yv, np.inf)), {}, ValueError, "validation_data.*targets must be finite"),
    (2, (xv, {"a": yv, "b": with_value(yv, np.nan)}), {}, ValueError, "validation_data.*targets must be finite"),
    (1, (xv, yv.astype(str)), {}, ValueError, "validation_data.*targets must be numbers.*dtype <U"),
    (1, (xv, yv, with_value(np.ones(32), np.nan)), {}, ValueError, "validation_data.*sample weights.*finite"),
    (1, (xv, yv, with_value(np.ones(32), -1.0)), {}, ValueError, r"validation_data.*sample weights.*>= 0"),
    # Validation data no check could be measured on, or that fit's validation loss would fail on.
    (1, (), {}, ValueError, r"validation_data.*Received: validation_data=\(\)"),
    (1, (xv,), {}, ValueError, "validation_data.*must carry targets"),
    (1, (xv[:0], yv[:0]), {}, ValueError, "validation_data.*no samples"),
    (1, (xv, yv + 0.5), {}, ValueError, r"validation_data.*class indices.*received \d\.5"),
    (1, (xv, np.eye(3)[yv]), {}, ValueError, "validation_data.*could not be evaluated.*(rank|shape)"),  # one-hot, 3 wide
    (1, (xv, yv, np.zeros(32)), {}, ValueError, "validation_data.*sample weights are 0"),
    # The guard and the climb's settings (the sparsity mode refuses them all as tolerance settings).
    (1, (xv, yv), {"guard": "agreement"}, TypeError, "argument `guard`"),
    (1, (xv, yv), {"guard": AgreementGuard(0.1, inputs=xv[:, :5])}, ValueError,
     "argument `inputs` of AgreementGuard.*could not be evaluated.*5|configure the tolerance mode"),
    (1, (xv, yv), {"guard": AgreementGuard(0.1, inputs=nan_x)}, ValueError,
     "argument `inputs` of AgreementGuard.*not all finite|configure the tolerance mode"),
    (1, (xv, yv), {"guard": AgreementGuard(0.1, inputs=xv[:0])}, ValueError,
     "argument `inputs` of AgreementGuard.*no samples|configure the tolerance mode"),
    (1, (xv, yv), {"monitor": ""}, ValueError, "argument `monitor`"),
    (1, (xv, yv), {"monitor": "val_los"}, ValueError, "argument `monitor`.*'val_los'.*'val_loss'"),
    (1, (xv, yv), {"mode": "min"}, ValueError, "argument `mode`.*top-1|configure the tolerance mode"),
    (1, (xv, yv), {"levels": [0.0, 0.5]}, ValueError, r"argument `levels`.*\(0, 1\]|configure the tolerance mode"),
    (1, (xv, yv), {"max_sparsity": 0.0}, ValueError,
     r"argument `max_sparsity`.*\(0, 1\]|configure the tolerance mode"),
    (1, (xv, yv), {"monitor": "val_auc"}, ValueError, "argument `monitor`.*val_auc"),  # not compiled
    (1, (xv, yv), {"patience": 2}, ValueError, "`patience` has no meaning"),
    (1, (xv, yv), {"start_epoch": 1}, ValueError, "`start_epoch` has no meaning"),
    (1, (xv, yv), {"batch_size": 0}, ValueError, "argument `batch_size`"),
    (1, (xv, yv), {"mode": "up"}, ValueError, "argument `mode`|configure the tolerance mode"),
]


@pytest.mark.parametrize("mode", ["tolerance", "sparsity"])
@pytest.mark.parametrize("outputs, validation, kwargs, error, match", CASES)
def test_a_refused_shrink_leaves_model_and_optimizer_as_they_were(mode, outputs, validation, kwargs, error, match):
    model = trained(outputs)
    x, y = data()
    before = state(model)
    target = {"tolerance": 0.05} if mode == "tolerance" else {"sparsity": 0.5}
    with pytest.raises(error, match=match):
        rk.shrink(model, x, y if outputs == 1 else {"a": y, "b": y}, validation_data=validation, epochs=2,
                  **target, **kwargs)
    assert_unchanged(before, state(model))


def test_sparsity_mode_reports_a_regression_models_validation_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x, _ = data()
    y = x[:, :1] * 2.0
    model.fit(x, y, epochs=2, verbose=0)
    validation = (xv, xv[:, :1] * 2.0)
    start = model.evaluate(*validation, verbose=0)
    result = rk.shrink(model, x, y, sparsity=0.5, validation_data=validation, epochs=1)
    assert result.monitor == "val_loss" and result.baseline == pytest.approx(start, rel=1e-4)
    assert result.final == pytest.approx(model.evaluate(*validation, verbose=0), rel=1e-4)


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def frozen_optimizer(model):
    # Learning rate 0: `fit` itself changes no weight, so any change is the callback's.
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


BAD_INPUT = [
    # The old `penalty=`, `relative=`, `fine_tune_epochs=` are gone: named as unknown.
    row("phase-penalty-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, penalty=keras.regularizers.L1),
     TypeError, "penalty"),
    row("phase-relative-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, relative="False"), TypeError,
     "relative"),
    row("phase-fine_tune_epochs-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, fine_tune_epochs=3),
     TypeError, "fine_tune_epochs"),
    row("phase-no-start", lambda m: rk.callbacks.ShrinkPhase(sparsity=0.5), ValueError, "start_epoch"),
    row("phase-start-negative", lambda m: rk.callbacks.ShrinkPhase(start_epoch=-1, sparsity=0.5), ValueError,
     "start_epoch"),
    row("phase-sparsity-above-1", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=1.5), ValueError,
     "sparsity"),
    row("phase-granularity-typo", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=0.5, granularity="unit "),
     ValueError, "granularity"),
    row("shrink-not-compiled", lambda m: rk.shrink(m, *tiny_data(), sparsity=0.5), ValueError, "compile"),
    row("shrink-head-without-attention", lambda m: rk.shrink(m, *tiny_data(), sparsity=0.5, granularity="head"),
     ValueError, "granularity='head' removes whole attention heads", prepare=compiled),
    row("shrink-epochs-zero", lambda m: rk.shrink(m, *tiny_data(), sparsity=0.5, epochs=0), ValueError,
     "epochs", prepare=compiled),
    row("shrink-tolerance-no-validation", lambda m: rk.shrink(m, *tiny_data()), ValueError,
     "validation_data", prepare=compiled),
    # fit ended by the phase's error (its monitored metric is missing): nothing of the phase stays.
    row("phase-monitor-missing-in-fit", lambda m: m.fit(
        *tiny_data(), epochs=2, verbose=0, callbacks=[rk.callbacks.ShrinkPhase(Plateau(patience=1), sparsity=0.5)]),
        ValueError, "val_loss", prepare=frozen_optimizer),
    # Refused before the guard's inputs are set (issue #37: an AttributeError).
    row("shrink-guard-not-a-guard", lambda m: rk.shrink(m, *tiny_data(), tolerance=0.1, guard="agreement",
                                                         validation_data=tiny_data()), TypeError,
        "argument `guard`", prepare=compiled),
    row("shrink-validation-nan-targets", lambda m: rk.shrink(
        m, *tiny_data(), tolerance=0.1, validation_data=(tiny_data()[0], with_value(tiny_data()[1], np.nan))),
        ValueError, "targets must be finite", prepare=compiled),
    # The hang: a dataset that repeats forever, without steps_per_epoch.
    row("shrink-infinite-dataset", lambda m: rk.shrink(m, infinite_dataset(), sparsity=0.5), ValueError,
     "steps_per_epoch", prepare=compiled),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_start_epoch_after_the_last_epoch_is_said():
    model = frozen_optimizer(model_under_test())
    before = model_state(model)
    with pytest.warns(UserWarning, match=r"start_epoch=5\) will not start"):
        phase = rk.callbacks.ShrinkPhase(start_epoch=5, sparsity=0.5)
        model.fit(*tiny_data(), epochs=2, verbose=0, callbacks=[phase])
    assert_model_unchanged(before, model_state(model))  # nothing happened, and that was said


def right_unsorted_and_repeated_levels_are_climbed_in_rising_order_once():
    policy = ToleranceClimb(levels=[0.9, 0.5, 0.5], max_sparsity=0.95)
    policy.bind(rk.pruning.Weights())
    assert policy.levels == (0.5, 0.9, 0.95)


def class_model(loss):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    model.compile("sgd", loss)
    return model


def right_validation_data_as_a_list_is_read_as_fit_reads_a_tuple():
    model = class_model(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert ValidationCheck(0.1).start(model, [xv, yv]) == ValidationCheck(0.1).start(model, (xv, yv))


def right_a_class_index_the_loss_ignores_is_taken_and_counts_as_a_miss():
    # Segmentation-style void labels (`ignore_class`) are valid targets for
    # fit's validation loss: the loss probe must not refuse them.
    model = class_model(keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1))
    labels = with_value(yv, -1, dtype="int32")
    predicted = np.argmax(keras.ops.convert_to_numpy(model(xv)), axis=-1)
    assert ValidationCheck(0.1).start(model, (xv, labels)) == pytest.approx(np.mean(predicted == labels))


RIGHT = right_checks(
    right_start_epoch_after_the_last_epoch_is_said,
    right_unsorted_and_repeated_levels_are_climbed_in_rising_order_once,
    right_validation_data_as_a_list_is_read_as_fit_reads_a_tuple,
    right_a_class_index_the_loss_ignores_is_taken_and_counts_as_a_miss,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)


@pytest.mark.clear_session_per_module
def test_lead_rows_shrink_callbacks_none_verbose_and_an_empty_mapping():
    # Siblings found late: each gets a clear answer at the call.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="verbose"):
        rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=0.5, verbose="1")
    with pytest.raises(ValueError, match="regularizers.*empty"):
        rk.apply_regularizers(model, {})
    assert model.losses == []
    model.compile("adam", "mse")
    x = np.zeros((8, 4), "float32")
    result = rk.shrink(model, x, np.zeros((8, 2), "float32"), sparsity=0.5, epochs=1, callbacks=None)
    assert result.sparsity == pytest.approx(0.5)
