"""Each part of the shrink on its own: the sparsity schedule, the scores, the
cut and its held zeros, the agreement guard, the final check."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit import pruning
from keras_regkit.shrinking import AgreementGuard, CubicRamp, Curvature, Magnitude, data, guards, masks, scores


# -- schedules ----------------------------------------------------------------

def test_cubic_ramp_starts_at_the_first_cut_rises_ever_slower_and_holds_the_target():
    ramp = CubicRamp(0.98, initial=0.8, ramp_fraction=0.8)
    progress = np.linspace(0, 1, 101)
    values = np.array([ramp(p) for p in progress])
    assert values[0] == pytest.approx(0.8)
    assert (np.diff(values) >= -1e-12).all()
    steps = np.diff(values[:81])
    assert (np.diff(steps) <= 1e-12).all()  # concave: big cuts first
    assert values[80:] == pytest.approx([0.98] * 21)
    # Zhu & Gupta's equation at a point.
    assert ramp(0.4) == pytest.approx(0.98 + (0.8 - 0.98) * (1 - 0.4 / 0.8) ** 3)
    # A first cut above the target is the target: one cut, then hold.
    assert CubicRamp(0.5, initial=0.8)(0.0) == 0.5


def test_cubic_ramp_round_trips_and_validates():
    ramp = CubicRamp(0.9, initial=0.3, ramp_fraction=0.5)
    assert CubicRamp.from_config(ramp.get_config()).get_config() == ramp.get_config()
    with pytest.raises(ValueError, match=r"argument `target`.*target=1.2"):
        CubicRamp(1.2)
    with pytest.raises(ValueError, match="argument `ramp_fraction`"):
        CubicRamp(0.9, ramp_fraction=0.0)


# -- scores -------------------------------------------------------------------

def adam_trained_dense():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    model.compile(keras.optimizers.Adam(0.01, beta_2=0.9), "mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    # Input 0 scaled up: its weights see much larger gradients.
    x[:, 0] *= 10
    model.fit(x, x[:, :3], epochs=2, batch_size=16, verbose=0)
    return model


def test_second_moment_is_the_optimizers_velocity_slot():
    # Fails loudly if a Keras release renames Adam's slots.
    model = adam_trained_dense()
    kernel = model.get_layer("d").kernel
    velocity = scores.second_moment(model.optimizer, kernel)
    assert velocity is not None and tuple(velocity.shape) == (4, 3)
    assert velocity.path.endswith("d_kernel_velocity")
    assert np.asarray(keras.ops.convert_to_numpy(velocity)).min() > 0
    # The slot moves with training: it is the live variable, not a copy.
    before = np.array(keras.ops.convert_to_numpy(velocity))
    model.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 3), "float32"))
    assert not np.array_equal(before, keras.ops.convert_to_numpy(velocity))
    assert scores.second_moment(keras.optimizers.SGD(0.1), kernel) is None


def test_curvature_score_is_w_squared_times_sqrt_v_and_ranks_by_sensitivity():
    model = adam_trained_dense()
    kernel = model.get_layer("d").kernel
    (ref,) = rk.iter_weights(model)
    (score,) = Curvature().scores([ref], model.optimizer)
    w = keras.ops.convert_to_numpy(kernel)
    v = keras.ops.convert_to_numpy(scores.second_moment(model.optimizer, kernel))
    np.testing.assert_allclose(score, w**2 * np.sqrt(v), rtol=1e-6)
    (plain,) = Magnitude().scores([ref], model.optimizer)
    np.testing.assert_allclose(plain, w**2)
    # Weights of the loud input rank higher by curvature than by size alone.
    rank = lambda s: s.ravel().argsort().argsort()  # noqa: E731
    assert rank(score).reshape(4, 3)[0].mean() > rank(plain).reshape(4, 3)[0].mean()


def test_curvature_falls_back_to_magnitude_for_a_fresh_optimizer_and_warns_once():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    refs = list(rk.iter_weights(model))
    score = Curvature()
    with pytest.warns(UserWarning, match="has not taken a step"):
        (got,) = score.scores(refs, model.optimizer)
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(refs[0].variable) ** 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        score.scores(refs, model.optimizer)  # once only


def test_unit_scores_are_relative_to_the_layer_mean():
    entry = np.array([[1.0, 4.0, 0.0], [3.0, 4.0, 0.0]])
    np.testing.assert_allclose(scores.unit_scores(entry), [1.0, 2.0, 0.0])  # means 2, 4, 0 over their mean 2


# -- the cut and its held zeros -----------------------------------------------

def two_layers():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, name="a"), keras.layers.Dense(5, name="b")])
    model.get_layer("b").kernel.assign(model.get_layer("b").kernel * 100.0)  # b's weights all large
    return model


def test_cut_is_exact_global_and_never_regrows():
    model = two_layers()
    refs = list(rk.iter_weights(model))
    total = 60 + 50
    first = masks.cut(model, refs, Magnitude().scores(refs), 0.4)
    assert first.zeros == round(0.4 * total) == first.zeros
    a, b = (keras.ops.convert_to_numpy(r.variable) for r in refs)
    assert (a == 0).sum() == 44 and (b == 0).sum() == 0  # one threshold: the small layer goes first
    # Scores that would prefer other entries now: the old zeros stay zero.
    shuffled = [np.random.default_rng(1).random(r.variable.shape) for r in refs]
    second = masks.cut(model, refs, shuffled, 0.5)
    a2, b2 = (keras.ops.convert_to_numpy(r.variable) for r in refs)
    assert second.zeros == (a2 == 0).sum() + (b2 == 0).sum() == 55
    assert ((a == 0) <= (a2 == 0)).all()
    assert masks.zero_count(refs) == (55, 110)


def test_cut_by_units_zeroes_whole_columns():
    model = two_layers()
    refs = list(rk.iter_weights(model))
    result = masks.cut(model, refs, Magnitude().scores(refs), 0.4, granularity="unit")
    assert result.zeros == 6 and result.total == 15
    dead = 0
    for ref in refs:
        k = keras.ops.convert_to_numpy(ref.variable)
        assert ((k == 0).all(axis=0) == (k == 0).any(axis=0)).all()
        dead += int((k == 0).all(axis=0).sum())
    assert dead == 6


def test_held_zeros_stay_zero_through_training_and_a_new_hold_replaces_the_mask():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 8)).astype("float32")
    rk.prune(model, sparsity=0.25, hold=True)
    first = keras.ops.convert_to_numpy(model.get_layer("d").kernel) == 0
    model.fit(x, y, epochs=2, verbose=0)
    after = keras.ops.convert_to_numpy(model.get_layer("d").kernel)
    assert ((after == 0) == first).all()  # held, and nothing else became zero
    # A second, larger prune with hold: the new zeros are held too.
    rk.prune(model, sparsity=0.75, hold=True)
    second = keras.ops.convert_to_numpy(model.get_layer("d").kernel) == 0
    model.fit(x, y, epochs=2, verbose=0)
    assert ((keras.ops.convert_to_numpy(model.get_layer("d").kernel) == 0) == second).all()
    # Holding fewer zeros (a rollback) frees the others to train again.
    kernel = model.get_layer("d").kernel
    kernel.assign(np.where(first, 0.0, 0.1).astype("float32"))
    pruning.hold_zeros(model, [kernel])
    model.fit(x, y, epochs=1, verbose=0)
    assert ((keras.ops.convert_to_numpy(kernel) == 0) == first).all()


# -- guards -------------------------------------------------------------------

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


def test_sample_inputs_keeps_the_structure_of_list_and_dict_inputs():
    x = {"a": np.arange(10.0)[:, None], "b": np.arange(10.0)[:, None] * 2}
    taken = data.sample_inputs(x, 4)
    assert set(taken) == {"a", "b"} and taken["a"].shape == (4, 1)
    np.testing.assert_array_equal(taken["b"], taken["a"] * 2)  # rows stay paired
    listed = data.sample_inputs([np.arange(10.0), np.arange(10.0)], 20)
    assert len(listed) == 2 and listed[0].shape == (10,)


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
    strict.start_hits, strict.data, strict.steps = check.start_hits, check.data, None
    assert strict.measure(model)[1] == pytest.approx(1.0 - accuracy)
    kernel.assign(keras.ops.full((3, 4), float("nan")))
    assert not check.holds(model)  # NaN predictions are never right


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
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 1.1)  # 15.5 % worse: fails
    assert not check.holds(model)
    with pytest.raises(ValueError, match="val_mse"):
        guards.ValidationCheck(0.1, monitor="val_mse").start(model, (x, y))
