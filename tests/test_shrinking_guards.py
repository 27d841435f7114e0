"""The shrink's guards on their own (`shrinking/guards.py`): the agreement
guard, and the validation check of the tolerance mode."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.shrinking import AgreementGuard, guards


def test_agreement_guard_counts_changed_top1_predictions():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    x = np.random.default_rng(0).normal(size=(500, 3)).astype("float32")
    guard = AgreementGuard(max_disagreement=0.1, samples=200)
    guard.start(model, x)
    assert guard.inputs.shape == (200, 3) and guard.disagreement(model) == 0.0
    before = np.argmax(model.predict(guard.inputs, verbose=0), axis=-1)
    kernel = model.layers[0].kernel
    kernel.assign(kernel * np.array([1.0, 1.0, 1.0, -1.0], "float32"))
    after = np.argmax(model.predict(guard.inputs, verbose=0), axis=-1)
    assert guard.disagreement(model) == pytest.approx(np.mean(before != after))
    assert guard.holds(model) == (np.mean(before != after) <= 0.1)
    kernel.assign(keras.ops.full(kernel.shape, float("nan")))
    assert not guard.holds(model)


def test_guard_refuses_a_model_without_classes():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="class axis of 2 or more"):
        AgreementGuard(0.1).start(model, np.zeros((4, 3), "float32"))


def test_validation_check_compares_each_class_output_with_its_start_sample_by_sample():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), -1)  # the start is right everywhere
    check = guards.ValidationCheck(tolerance=0.02)
    assert check.start(model, (x, y)) == 1.0 and check.holds(model)
    kernel = model.layers[0].kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) + np.random.default_rng(1).normal(size=(3, 4)) * 0.3)
    accuracy = np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), -1) == y)
    # The loss counts beyond one standard error of the paired change:
    # sqrt(changed) / n, every changed sample having been right.
    changed = round((1.0 - accuracy) * 200)
    worse = 1.0 - accuracy - np.sqrt(changed) / 200
    assert check.measure(model) == pytest.approx((accuracy, worse))
    assert check.holds(model) == (worse <= 0.02)
    strict = guards.ValidationCheck(tolerance=0.02, slack=0.0)
    strict.start_hits, strict.data = check.start_hits, check.data
    assert strict.measure(model)[1] == pytest.approx(1.0 - accuracy)
    kernel.assign(keras.ops.full((3, 4), float("nan")))
    assert not check.holds(model)  # NaN predictions are never right


def test_validation_check_measures_a_gain_beyond_noise_as_well():
    # What lets the climb skip a level: how much better than the start the
    # model is, less the same standard error a loss is forgiven.
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    kernel = model.layers[0].kernel
    start = keras.ops.convert_to_numpy(kernel)
    better = start + np.random.default_rng(1).normal(size=(3, 4)).astype("float32") * 0.3
    kernel.assign(better)
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), -1)  # the changed model is right everywhere
    kernel.assign(start)
    check = guards.ValidationCheck(tolerance=0.02)
    gained = 1.0 - check.start(model, (x, y))
    assert 0 < gained < 1
    kernel.assign(better)
    noise = np.sqrt(round(gained * 200)) / 200
    assert check.measure(model)[1] == pytest.approx(-gained - noise)
    assert check.gain == pytest.approx(gained - noise)


def test_validation_check_of_an_error_metric_is_relative_to_its_start():
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["mae"])
    y = np.zeros((64, 1), "float32")
    model.evaluate(x, y, verbose=0)  # builds the compiled metrics
    check = guards.ValidationCheck(tolerance=0.1, monitor="val_mae")
    start = check.start(model, (x, y))
    assert start == pytest.approx(model.evaluate(x, y, verbose=0, return_dict=True)["mae"], rel=1e-5)
    kernel = model.layers[0].kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 1.05)  # MAE 5 % worse: holds
    assert check.measure(model)[1] == pytest.approx(0.05, abs=1e-4) and check.holds(model)
    assert check.gain == pytest.approx(-0.05, abs=1e-4)
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 1.1)  # 15.5 % worse: fails
    assert not check.holds(model)
    with pytest.raises(ValueError, match="val_mse"):
        guards.ValidationCheck(0.1, monitor="val_mse").start(model, (x, y))


def two_output_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, [keras.layers.Dense(4, name="a")(inputs), keras.layers.Dense(4, name="b")(inputs)])


def test_a_gain_counts_only_as_far_as_the_class_output_that_gained_least():
    # The climb skips a level only when every class output is ahead: the
    # gain is the worst output's, as the loss is.
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
    model = two_output_model()
    a = model.get_layer("a").kernel
    start_a = keras.ops.convert_to_numpy(a)
    better_a = start_a + np.random.default_rng(1).normal(size=(3, 4)).astype("float32") * 0.3
    a.assign(better_a)
    ya = np.argmax(keras.ops.convert_to_numpy(model(x)[0]), -1)
    yb = np.argmax(keras.ops.convert_to_numpy(model(x)[1]), -1)  # output b is right everywhere, from the start
    a.assign(start_a)
    check = guards.ValidationCheck(tolerance=0.02)
    check.start(model, (x, [ya, yb]))
    a.assign(better_a)  # a gains, b stays as it was
    check.measure(model)
    assert check.gain == pytest.approx(0.0)
    assert not check.verdict(model).ahead


class Refusing(AgreementGuard):
    """A guard that refuses whatever it is shown."""

    def __init__(self):
        super().__init__(0.0, inputs=np.zeros((2, 3), "float32"))
        self.asked = 0

    def holds(self, model):
        self.asked += 1
        return False


def test_every_verdict_applies_the_guard_even_within_the_tolerance():
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), -1)
    guard = Refusing()
    check = guards.ValidationCheck(tolerance=0.5, guard=guard)
    check.start(model, (x, y))
    verdict = check.verdict(model)
    assert verdict.worse <= 0 and not verdict.held and guard.asked == 1


def test_the_final_check_of_a_held_level_applies_the_guard_too():
    # The end-of-budget check once ignored the guard its levels had to hold.
    # Levels pass (the guard holds while climbing), the final check is
    # refused by the guard alone: the level comes back as it passed.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, verbose=0)

    class RefusesAtTheEnd(AgreementGuard):
        ending = False

        def holds(self, model):
            return not self.ending

    class Ends(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            guard.ending = True

    guard = RefusesAtTheEnd(1.0, inputs=x)
    policy = rk.shrinking.ToleranceClimb(1.0, guard=guard, levels=(0.5,), max_sparsity=0.5, cut_every=2)
    phase = rk.callbacks.ShrinkPhase(start_epoch=0, policy=policy, validation_data=(x, y))
    with phase:
        model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[Ends(), phase])
    assert [held for _, _, held in phase.result.levels] == [True]
    assert phase.result.rollbacks == 1  # back to the level as it passed


class Measured(guards.ValidationCheck):
    """A check whose measurement is given: `worse` and `gain`."""

    def __init__(self, tolerance, worse, gain):
        super().__init__(tolerance)
        self.data, self.fixed = (), (worse, gain)

    def measure(self, model):
        worse, self.gain = self.fixed
        return 0.9, worse


@pytest.mark.parametrize("worse, gain, held, ahead", [
    (0.02, 0.0, True, False),  # exactly the tolerance lost: holds
    (0.0201, 0.0, False, False),
    (-0.01, 0.01, True, True),  # ahead by exactly SKIP_GAIN (not the tolerance): the next level is skipped
    (-0.0099, 0.0099, True, False),
    (0.021, 0.03, False, False),  # a level that fails is never ahead
    (float("nan"), float("nan"), False, False),  # a model gone non-finite fails
])
def test_a_verdict_holds_within_the_tolerance_and_is_ahead_by_the_skip_gain(worse, gain, held, ahead):
    verdict = Measured(0.02, worse, gain).verdict(model=None)
    assert (verdict.held, verdict.ahead) == (held, ahead)


def test_one_reading_runs_the_validation_data_through_the_model_once(monkeypatch):
    # A decision that finds a level recovered (drift) checks it at once, on
    # the same predictions; outside a reading each call reads the model anew.
    from keras_regkit.shrinking import guards

    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    check = rk.shrinking.ValidationCheck(tolerance=0.01)
    check.start(model, (x, y))
    reads = []
    real = guards.validation_hits
    monkeypatch.setattr(guards, "validation_hits", lambda *a: reads.append(1) or real(*a))
    with check.one_reading():
        drift, verdict = check.drift(model), check.verdict(model)
        assert len(reads) == 1
        check.forget()  # the model changed (simulated int8 recalibrated)
        assert check.verdict(model) == verdict and len(reads) == 2
    check.drift(model), check.verdict(model)
    assert len(reads) == 4 and drift == 0.0 and verdict.held
