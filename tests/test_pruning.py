import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity
from keras_regkit.pruning.granularity import Units, Weights
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning.scores import Curvature, Magnitude
from keras_regkit.pruning.units import output_layers

from conftest import (assert_refused_and_unchanged, kill, right_checks, row, run_with_fixtures, tiny_data, tiny_mlp,
                      to_numpy, unbuilt)


L = keras.layers


def kernels(model):
    return [keras.ops.convert_to_numpy(ref.variable) for ref in rk.iter_weights(model)]


def test_dead_units_counts_units_whose_kernel_weights_are_all_zero():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")], name="inner")
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.DepthwiseConv2D(2, depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(5, 2, name="sep")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4, name="dense")(x)
    model = keras.Model(inp, inner(x))
    kill(model.get_layer("conv"), [0, 2], biases=[1.0, 2.0])  # biases don't matter
    kill(model.get_layer("sep"), [4])  # through its pointwise kernel
    dw = model.get_layer("dw")
    kernel = to_numpy(dw.kernel)
    kernel[..., 1, 0] = 0.0  # feeds output channel 1 * 2 + 0 alone
    dw.kernel.assign(kernel)
    kill(inner.get_layer("d"), [0, 1, 2])
    dense = model.get_layer("dense")
    kernel = to_numpy(dense.kernel)
    kernel[1:, 3] = 0.0  # one weight left: not dead
    dense.kernel.assign(kernel)

    assert rk.dead_units(model) == {
        "conv": (2, 4),
        "dw": (1, 8),
        "sep": (1, 5),
        "dense": (0, 4),
        "inner/d": (3, 3),
    }


def test_dead_units_of_a_non_layer_is_a_type_error():
    with pytest.raises(TypeError, match=r"argument `model`.*Received: model=3 of type int"):
        rk.dead_units(3)


def test_threshold_zeroes_exactly_the_small_entries():
    model = tiny_mlp()
    before = kernels(model)
    result = rk.prune(model, threshold=0.2)
    for old, new in zip(before, kernels(model)):
        np.testing.assert_array_equal(new, np.where(np.abs(old) <= 0.2, 0.0, old))
    assert result.zeros == sum(int((np.abs(k) <= 0.2).sum()) for k in before)
    assert result.params == sum(k.size for k in before)


@pytest.mark.parametrize("target", [0.0, 0.3, 0.9, 1.0])
def test_sparsity_uses_one_global_threshold(target):
    model = tiny_mlp(units=(16, 8))
    before = np.concatenate([k.ravel() for k in kernels(model)])
    result = rk.prune(model, sparsity=target)
    after = np.concatenate([k.ravel() for k in kernels(model)])
    assert result.sparsity == pytest.approx((after == 0).mean())
    # Exactly the count asked for: ties are broken by position.
    assert (after == 0).sum() == round(target * before.size)
    kept = after != 0
    if kept.any() and not kept.all():
        assert np.abs(before[~kept]).max() < np.abs(before[kept]).min()


def test_layers_and_bias_selection():
    model = tiny_mlp()
    bias_before = keras.ops.convert_to_numpy(model.get_layer("out").bias)
    rk.prune(model, threshold=10.0, layers="hidden0")
    assert (kernels(model)[0] == 0).all() and (kernels(model)[1] != 0).all()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("out").bias), bias_before)


def test_hold_keeps_zeros_through_training_and_release_lets_go():
    model = tiny_mlp(kernel_constraint=keras.constraints.MaxNorm(0.5))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = tiny_data()
    model.fit(x, y, epochs=1, verbose=0)  # train function traced before the hold
    rk.prune(model, sparsity=0.5, hold=True)
    zeros = [k == 0 for k in kernels(model)]
    model.fit(x, y, epochs=3, verbose=0)
    after = kernels(model)
    for mask, kernel in zip(zeros, after):
        assert (kernel[mask] == 0).all()
        assert (kernel[~mask] != 0).all()
        # The user's own constraint still applies after the mask.
        assert np.sqrt((kernel**2).sum(axis=0)).max() <= 0.5 + 1e-5
    # Not written into the config: the saved model carries only the user's constraint.
    assert model.get_layer("out").get_config()["kernel_constraint"]["class_name"] == "MaxNorm"

    assert rk.release_zeros(model) == 2
    model.fit(x, y, epochs=1, verbose=0)
    # Most zeros move again (a few sit on dead ReLU units, whose gradient is 0).
    assert (np.concatenate([k.ravel() for k in kernels(model)]) == 0).mean() < 0.25
    assert isinstance(model.get_layer("out").kernel.constraint, keras.constraints.MaxNorm)


def test_without_hold_training_revives_zeros():
    model = tiny_mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rk.prune(model, sparsity=0.5)
    x, y = tiny_data()
    model.fit(x, y, epochs=1, verbose=0)
    # Half were zero; a few stay on ReLU units that the cut left dead (which
    # ones depends on the backend's random initialisation).
    assert (np.concatenate([k.ravel() for k in kernels(model)]) == 0).mean() < 0.2


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "exactly one of"),
    ({"threshold": 0.1, "sparsity": 0.5}, ValueError, "exactly one of"),
    ({"sparsity": 1.5}, ValueError, "argument `sparsity`"),
    ({"threshold": -1.0}, ValueError, "argument `threshold`"),
    ({"threshold": "x"}, TypeError, "argument `threshold`"),
])
def test_bad_arguments_change_nothing(kwargs, error, match):
    model = tiny_mlp()
    before = kernels(model)
    with pytest.raises(error, match=match):
        rk.prune(model, **kwargs)
    for a, b in zip(before, kernels(model)):
        np.testing.assert_array_equal(a, b)


def relative_unit_mean_square(kernel):
    mean_square = (kernel.reshape(-1, kernel.shape[-1]) ** 2).mean(axis=0)
    return mean_square / mean_square.mean()


def test_unit_granularity_zeroes_whole_units_by_mean_square_relative_to_their_layer():
    model = tiny_mlp(units=(16, 8, 4))
    before = kernels(model)
    result = rk.prune(model, sparsity=0.5, granularity="unit")
    after = kernels(model)
    # Only the hidden layers are covered: the output layer's units are the outputs.
    np.testing.assert_array_equal(after[-1], before[-1])
    assert [ref.path for ref in result.refs] == ["hidden0", "hidden1"]
    dead = [(k == 0).all(axis=0) for k in after[:-1]]
    assert sum(d.sum() for d in dead) == 12  # half of 16 + 8 units
    for kernel, old, is_dead in zip(after[:-1], before[:-1], dead):
        # A unit is either all zero or untouched.
        np.testing.assert_array_equal(kernel[:, ~is_dead], old[:, ~is_dead])
    score_dead = np.concatenate([relative_unit_mean_square(o)[d] for o, d in zip(before[:-1], dead)])
    score_kept = np.concatenate([relative_unit_mean_square(o)[~d] for o, d in zip(before[:-1], dead)])
    assert score_dead.max() < score_kept.min()
    assert result.threshold == pytest.approx(score_dead.max())
    assert result.zeros == sum(k.shape[0] * d.sum() for k, d in zip(after[:-1], dead))


def test_unit_ranking_ignores_how_the_layers_are_scaled():
    # Scaling a ReLU layer up and the next one down leaves the function as it
    # was; it must leave the choice of units as it was too (raw RMS would
    # take every unit of the scaled-down layer first).
    def dead_after_pruning(scale):
        keras.utils.set_random_seed(0)
        model = tiny_mlp(units=(16, 8, 4))
        hidden0, hidden1 = model.get_layer("hidden0"), model.get_layer("hidden1")
        hidden0.kernel.assign(hidden0.kernel * scale)
        hidden0.bias.assign(hidden0.bias * scale)
        hidden1.kernel.assign(hidden1.kernel / scale)
        rk.prune(model, sparsity=0.5, granularity="unit")
        return [(k == 0).all(axis=0).tolist() for k in kernels(model)[:2]]

    unscaled = dead_after_pruning(1.0)
    assert 0 < sum(unscaled[0]) < 16 and 0 < sum(unscaled[1]) < 8
    assert dead_after_pruning(100.0) == unscaled
    assert dead_after_pruning(0.01) == unscaled


def test_unit_pruning_again_at_its_own_threshold_kills_nothing_more():
    # Dead units count in their layer's mean: the survivors' scores only
    # rise, so a threshold once applied is stable.
    model = tiny_mlp(units=(16, 8, 4))
    first = rk.prune(model, sparsity=0.5, granularity="unit")
    before = kernels(model)
    again = rk.prune(model, threshold=first.threshold, granularity="unit")
    assert again.zeros == first.zeros
    for old, new in zip(before, kernels(model)):
        np.testing.assert_array_equal(new, old)


def test_unit_granularity_covers_conv_filters():
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(6, 3, name="conv"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, name="out"),
    ])
    result = rk.prune(model, threshold=10.0, granularity="unit")
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)
    assert (kernel == 0).all() and result.zeros == kernel.size
    assert (keras.ops.convert_to_numpy(model.get_layer("out").kernel) != 0).all()


def test_unit_granularity_rejects_what_it_cannot_do():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="granularity='unit'.*weights='bias'"):
        rk.prune(model, sparsity=0.5, weights="bias", granularity="unit")
    with pytest.raises(ValueError, match=r"all produce model outputs \(\['out'\]\)"):
        rk.prune(model, sparsity=0.5, layers="out", granularity="unit")
    with pytest.raises(ValueError, match=r"argument `granularity`.*'weight', 'unit', 'head', 'block' or 'N:M'.*'filter'"):
        rk.prune(model, sparsity=0.5, granularity="filter")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4)
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    subclassed = Subclassed()
    subclassed(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed model .* Functional or Sequential"):
        rk.prune(subclassed, sparsity=0.5, granularity="unit")


def test_output_layers_are_found_through_activations_and_nested_models():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                              keras.layers.Dense(2, name="b"), keras.layers.Activation("softmax")])
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, name="h")(inputs)
    added = keras.layers.Add()([keras.layers.Dense(2, name="c")(hidden), inner(inputs)])
    model = keras.Model(inputs, [added, keras.layers.Dense(1, name="d")(hidden)])
    assert sorted(layer.name for layer in output_layers(model)) == ["b", "c", "d"]


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
    velocity = scores_lib.second_moment(model.optimizer, kernel)
    assert velocity is not None and tuple(velocity.shape) == (4, 3)
    assert velocity.path.endswith("d_kernel_velocity")
    assert np.asarray(keras.ops.convert_to_numpy(velocity)).min() > 0
    # The slot moves with training: it is the live variable, not a copy.
    before = np.array(keras.ops.convert_to_numpy(velocity))
    model.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 3), "float32"))
    assert not np.array_equal(before, keras.ops.convert_to_numpy(velocity))
    assert scores_lib.second_moment(keras.optimizers.SGD(0.1), kernel) is None


def test_curvature_score_is_w_times_v_to_the_quarter_and_ranks_by_sensitivity():
    model = adam_trained_dense()
    kernel = model.get_layer("d").kernel
    (ref,) = rk.iter_weights(model)
    (score,) = Curvature().scores([ref], model.optimizer)
    w = keras.ops.convert_to_numpy(kernel)
    v = keras.ops.convert_to_numpy(scores_lib.second_moment(model.optimizer, kernel))
    np.testing.assert_allclose(score, np.abs(w) * v**0.25, rtol=1e-6)
    (plain,) = Magnitude().scores([ref], model.optimizer)
    np.testing.assert_allclose(plain, np.abs(w))
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
    np.testing.assert_allclose(got, np.abs(keras.ops.convert_to_numpy(refs[0].variable)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        score.scores(refs, model.optimizer)  # once only


def test_curvature_on_the_host_reads_the_moments_positivity_only_where_no_score_is_positive(monkeypatch):
    model = adam_trained_dense()
    kernel = model.get_layer("d").kernel
    refs = [ref for ref in rk.iter_weights(model) if ref.variable is kernel]
    reads = []
    real = scores_lib._any_positive
    monkeypatch.setattr(scores_lib, "_any_positive", lambda v: reads.append(len(v)) or real(v))
    Curvature().scores(refs, model.optimizer)
    assert reads == []  # a positive score: no reduction of the moments on the device
    trained = keras.ops.convert_to_numpy(kernel)
    kernel.assign(np.where(np.arange(12).reshape(4, 3) == 0, np.nan, trained))
    Curvature().scores(refs, model.optimizer)
    assert reads == []  # a NaN among them does not hide the positive ones
    # Moments above 0 only where the weights are 0: no score is positive,
    # yet the optimizer has stepped, so curvature it stays (no fallback).
    velocity = scores_lib.second_moment(model.optimizer, kernel)
    w = np.zeros((4, 3), "float32")
    w[1:] = 1.0
    kernel.assign(w)
    velocity.assign(np.where(w == 0, 1.0, 0.0).astype("float32"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        (got,) = Curvature().scores(refs, model.optimizer)
    assert reads == [1]
    np.testing.assert_array_equal(got, np.zeros((4, 3)))


def test_unit_scores_are_mean_squares_relative_to_the_layer_mean():
    entry = np.sqrt([[1.0, 4.0, 0.0], [3.0, 4.0, 0.0]])
    np.testing.assert_allclose(scores_lib.unit_scores(entry), [1.0, 2.0, 0.0])  # means 2, 4, 0 over their mean 2


def test_prune_and_the_shrinks_cut_remove_the_same_units():
    # One cut and one unit score: `prune` and the shrink (with the magnitude
    # score) pick the same units from the same weights.
    def dead(cut):
        keras.utils.set_random_seed(0)
        model = tiny_mlp(units=(16, 8, 4))
        cut(model)
        return [(k == 0).all(axis=0).tolist() for k in kernels(model)[:2]]

    def shrink_first_cut(model):
        refs = granularity.get("unit").select(model, "*")
        cut_lib.cut(refs, Magnitude().scores(refs), Units(), sparsity=0.5)

    assert dead(lambda m: rk.prune(m, sparsity=0.5, granularity="unit")) == dead(shrink_first_cut)


def test_unit_granularity_covers_depthwise_channels_and_compact_removes_them():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 3)),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, name="out"),
    ])
    result = rk.prune(model, sparsity=0.5, weights="depthwise_kernel", granularity="unit")
    assert rk.dead_units(model)["depthwise"] == (3, 6)
    kernel = keras.ops.convert_to_numpy(model.get_layer("depthwise").kernel)  # (3, 3, 3, 2)
    per_channel = (kernel == 0).reshape(9, 6)
    assert (per_channel.all(axis=0) == per_channel.any(axis=0)).all()  # whole channels only
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    small = rk.compact(model).model
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert result.refs[0].kind == "depthwise_kernel"


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
    first = cut_lib.cut(refs, Magnitude().scores(refs), Weights(), sparsity=0.4)
    assert first.zeros == round(0.4 * total) == first.zeros
    a, b = (keras.ops.convert_to_numpy(r.variable) for r in refs)
    assert (a == 0).sum() == 44 and (b == 0).sum() == 0  # one threshold: the small layer goes first
    # Scores that would prefer other entries now: the old zeros stay zero.
    shuffled = [np.random.default_rng(1).random(r.variable.shape) for r in refs]
    second = cut_lib.cut(refs, shuffled, Weights(), sparsity=0.5)
    a2, b2 = (keras.ops.convert_to_numpy(r.variable) for r in refs)
    assert second.zeros == (a2 == 0).sum() + (b2 == 0).sum() == 55
    assert ((a == 0) <= (a2 == 0)).all()
    assert Weights().count_dead(refs) == (55, 110)


def test_a_cut_by_sparsity_takes_exactly_round_s_n_the_earliest_of_tied_scores_first():
    # The lowest value is below every tie: it goes first; then the tied
    # entries by position, however many tie at the threshold.
    scores = np.array([2.0, 1.0, 1.0, 0.5, 1.0, 3.0, 1.0])
    np.testing.assert_array_equal(cut_lib.lowest_by_position(scores, 3), [0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(cut_lib.lowest_by_position(scores, 1), [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(cut_lib.lowest_by_position(scores, 0), [0] * 7)
    # Through `cut`: round(0.4 * 20) = 8 of a kernel whose 7 ones tie below
    # its 2s and 3s: the ones, then the first 2 (NumPy's own partition
    # would take another one of the 2s).
    values = np.array([3, 2, 1, 1, 3, 2, 2, 2, 3, 2, 1, 3, 1, 1, 3, 2, 1, 1, 2, 3], "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="d")])
    model.get_layer("d").kernel.assign(values.reshape(4, 5))
    refs = list(rk.iter_weights(model))
    result = cut_lib.cut(refs, Magnitude().scores(refs), Weights(), sparsity=0.4)
    kernel = keras.ops.convert_to_numpy(refs[0].variable).reshape(-1)
    assert result.zeros == 8 and result.threshold == 2.0
    np.testing.assert_array_equal(np.flatnonzero(kernel == 0), [1, 2, 3, 10, 12, 13, 16, 17])
    # All equal: exactly round(0.3 * 20) = 6 go, the first six.
    model.get_layer("d").kernel.assign(np.ones((4, 5), "float32"))
    cut_lib.cut(refs, Magnitude().scores(refs), Weights(), sparsity=0.3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(refs[0].variable).reshape(-1) == 0, np.arange(20) < 6)


def test_cut_by_units_zeroes_whole_columns():
    model = two_layers()
    refs = list(rk.iter_weights(model))
    result = cut_lib.cut(refs, Magnitude().scores(refs), Units(), sparsity=0.4)
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
    hold_lib.hold_zeros(model, [kernel])
    model.fit(x, y, epochs=1, verbose=0)
    assert ((keras.ops.convert_to_numpy(kernel) == 0) == first).all()


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def with_nonfinite(model):
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden0").kernel).copy()
    kernel[0, :2] = [np.nan, np.inf]
    model.get_layer("hidden0").kernel.assign(kernel)
    return model


def attention_model():
    inputs = keras.Input((4, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(outputs))


class GatedAttention(keras.layers.MultiHeadAttention):
    """An attention layer whose output is gated by its query: the gate's
    kernel belongs to no head."""

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self.gate = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, query_shape[-1]), name="gate")
        self.gate.build(query_shape)

    def call(self, query, value, key=None, **kwargs):
        return super().call(query, value, key, **kwargs) * keras.ops.sigmoid(self.gate(query))


def gated_model():
    inputs = keras.Input((5, 8))
    outputs = GatedAttention(num_heads=2, key_dim=4, name="gated")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(outputs)))


def test_a_gated_attention_under_unit_granularity_is_refused_saying_what_the_selection_holds():
    model = gated_model()
    before = [to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError) as raised:
        rk.prune(model, sparsity=0.5, granularity="unit")
    message = str(raised.value)
    assert "layers='*' (the default), weights='kernel' (the default)" in message
    assert "'gated/gate' (EinsumDense kernel inside attention layer 'gated', part of no head" in message
    assert "granularity='head'" in message
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, to_numpy(new))
    # What the message offers works: the heads alone.
    result = rk.prune(model, sparsity=0.5, granularity="head")
    assert rk.dead_units(model)["gated"] == (1, 2) and "gated/gate" not in [ref.path for ref in result.refs]


BAD_INPUT = [
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("prune-hold-str", lambda m: rk.prune(m, sparsity=0.5, hold="no"), TypeError, "hold"),
    row("prune-hold-none", lambda m: rk.prune(m, threshold=0.1, hold=None), TypeError, "hold"),
    # A model that is not built has no weights: say so, don't blame the selector.
    row("prune-unbuilt", lambda m: rk.prune(unbuilt(), sparsity=0.5), ValueError, "build the model first"),
    row("dead_units-unbuilt", lambda m: rk.dead_units(unbuilt()), ValueError, "build the model first"),
    # Callable selectors must answer True or False.
    row("selector-returns-str", lambda m: rk.prune(m, sparsity=0.5, layers=lambda layer: layer.name),
     TypeError, "must return True or False"),
    row("selector-list", lambda m: rk.prune(m, sparsity=0.5, layers=["hidden0"]), TypeError, "selector"),
    # Weight kinds.
    row("prune-weights-mixed", lambda m: rk.prune(m, sparsity=0.5, weights=["kernel", 3]), ValueError, "weights"),
    # Not a model.
    row("prune-model-list", lambda m: rk.prune(m.layers, sparsity=0.5), TypeError, "model"),
    row("release-model-none", lambda m: rk.release_zeros(None), TypeError, "model"),
    row("dead_units-model-str", lambda m: rk.dead_units("m"), TypeError, "model"),
    # Threshold, sparsity and granularity.
    row("prune-neither", lambda m: rk.prune(m), ValueError, "threshold"),
    row("prune-both", lambda m: rk.prune(m, threshold=0.1, sparsity=0.5), ValueError, "sparsity"),
    row("prune-sparsity-above-1", lambda m: rk.prune(m, sparsity=1.5), ValueError, "sparsity"),
    row("prune-threshold-nan", lambda m: rk.prune(m, threshold=float("nan")), ValueError, "threshold"),
    row("prune-threshold-str", lambda m: rk.prune(m, threshold="0.1"), TypeError, "threshold"),
    row("prune-granularity-typo", lambda m: rk.prune(m, sparsity=0.5, granularity="units"), ValueError, "granularity"),
    # Heads (issue #27): a model without attention; part of an attention layer; Wanda, which scores entries.
    row("prune-head-without-attention", lambda m: rk.prune(m, sparsity=0.5, granularity="head"), ValueError,
        "granularity='head' removes whole attention heads, and the selection has no attention layer"),
    row("prune-head-query-only", lambda m: rk.prune(attention_model(), sparsity=0.5, granularity="head",
                                                    layers="mha/query"), ValueError, "output projection"),
    row("prune-head-wanda", lambda m: rk.prune(m, sparsity=0.5, granularity="head", score="wanda",
                                               calibration_data=np.zeros((4, 6), "float32")), ValueError, "wanda"),
    row("prune-nonfinite-sparsity", lambda m: rk.prune(m, sparsity=0.5), ValueError, "NaN or inf",
        prepare=with_nonfinite),
    row("prune-nonfinite-threshold", lambda m: rk.prune(m, threshold=0.1), ValueError, "hidden0",
        prepare=with_nonfinite),
    # Families a careful user tries (issue #37).
    row("prune-sparsity-negative", lambda m: rk.prune(m, sparsity=-0.1), ValueError, "sparsity=-0.1"),
    row("prune-threshold-negative", lambda m: rk.prune(m, threshold=-1.0), ValueError, "threshold=-1.0"),
    row("prune-sparsity-str", lambda m: rk.prune(m, sparsity="50%"), TypeError, "sparsity='50%'"),
    row("prune-score-capitalised", lambda m: rk.prune(m, sparsity=0.5, score="Wanda"), ValueError, "score='Wanda'"),
    row("prune-score-none", lambda m: rk.prune(m, sparsity=0.5, score=None), ValueError, "score=None"),
    row("prune-ranking-none", lambda m: rk.prune(m, sparsity=0.5, ranking=None), ValueError, "ranking=None"),
    row("prune-granularity-none", lambda m: rk.prune(m, sparsity=0.5, granularity=None), ValueError,
        "granularity=None"),
    row("prune-unit-all-weights", lambda m: rk.prune(m, sparsity=0.5, granularity="unit", weights="all"), ValueError,
        "The selection (layers='*' (the default), weights='all') also holds weights that are neither: 'hidden0/bias'"),
    row("prune-unit-gated-attention", lambda m: rk.prune(gated_model(), sparsity=0.5, granularity="unit"), ValueError,
        "or cut attention heads alone with granularity='head'"),
    # HoldZeros.
    row("holdzeros-variable-array", lambda m: rk.pruning.HoldZeros(np.zeros(3)), TypeError, "variable"),
    row("holdzeros-inner-str", lambda m: rk.pruning.HoldZeros(m.get_layer("out").kernel, inner="non_neg"), TypeError,
        "inner"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_release_zeros_on_unbuilt_model_releases_nothing():
    assert rk.release_zeros(unbuilt()) == 0


def right_numpy_scalars_and_bools_are_taken_as_python_ones():
    model = tiny_mlp(units=(8, 4))
    result = rk.prune(model, sparsity=np.float32(0.25), hold=np.bool_(False))
    assert result.zeros == round(0.25 * result.params)


def right_a_sparsity_that_rounds_to_nothing_cuts_nothing():
    model = tiny_mlp(units=(8, 4))  # 80 kernel entries: 0.001 of them rounds to 0
    result = rk.prune(model, sparsity=0.001)
    assert result.zeros == 0 and result.threshold == 0.0


RIGHT = right_checks(
    right_release_zeros_on_unbuilt_model_releases_nothing,
    right_numpy_scalars_and_bools_are_taken_as_python_ones,
    right_a_sparsity_that_rounds_to_nothing_cuts_nothing,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
