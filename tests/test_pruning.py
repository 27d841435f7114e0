import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.weights import output_layers

from conftest import tiny_data, tiny_mlp


def kernels(model):
    return [keras.ops.convert_to_numpy(ref.variable) for ref in rk.iter_weights(model)]


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
    assert target <= result.sparsity <= target + 1 / before.size
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


def relative_unit_rms(kernel):
    rms = np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).mean(axis=0))
    return rms / rms.mean()


def test_unit_granularity_zeroes_whole_units_by_rms_relative_to_their_layer():
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
    score_dead = np.concatenate([relative_unit_rms(o)[d] for o, d in zip(before[:-1], dead)])
    score_kept = np.concatenate([relative_unit_rms(o)[~d] for o, d in zip(before[:-1], dead)])
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
    with pytest.raises(ValueError, match=r"argument `granularity`.*\['weight', 'unit'\].*'filter'"):
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
