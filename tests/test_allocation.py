"""prune(allocation=): one global sparsity shared out across layers
(`uniform`, a dict, OWL's outlier ratios, each layer's measured output
sensitivity), for magnitude, Wanda and the reconstruction."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import allocation as allocation_lib
from keras_regkit.pruning import layer_sensitivity

from conftest import assert_refused_and_unchanged, row, tiny_mlp

X = np.random.default_rng(1).normal(size=(64, 6)).astype("float32")
X8 = np.random.default_rng(4).normal(size=(64, 8)).astype("float32")  # two_layers' inputs


def two_layers(seed=0):
    """Two Dense kernels of the same size (8 x 8), so a spread moves each
    layer by the same count."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="a"),
                              keras.layers.Dense(8, name="b")])
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.kernel.assign(rng.normal(size=(8, 8)).astype("float32"))
    return model


def zeros_of(model):
    return {layer.name: int(np.sum(keras.ops.convert_to_numpy(layer.kernel) == 0)) for layer in model.layers}


def test_outlier_ratio_is_the_share_of_scores_above_m_times_the_layer_mean():
    hand = {"a": np.array([[1.0, 1.0, 1.0, 9.0]]), "b": np.ones((2, 2))}
    # a: mean 3, above 2 x 3 = 6: one of four. b: none above 2 x 1.
    assert allocation_lib.outlier_ratios(hand, 2.0) == {"a": 0.25, "b": 0.0}
    scores = np.abs(np.random.default_rng(0).standard_cauchy(size=(30, 20)))
    assert allocation_lib.outlier_ratios({"c": scores}, 5.0)["c"] == np.count_nonzero(
        scores > 5.0 * scores.mean()) / scores.size


@pytest.mark.parametrize("seed", range(5))
def test_bounded_shares_keep_the_global_count_within_the_spread(seed):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(rng.integers(2, 7))]
    sizes = {name: int(rng.integers(10, 3000)) for name in names}
    signal = {name: float(rng.normal()) for name in names}
    sparsity, spread = float(rng.uniform(0.1, 0.95)), float(rng.uniform(0.01, 0.3))
    shares = allocation_lib.bounded_shares(signal, sizes, sparsity, spread)
    zeros = {name: shares[name] * sizes[name] for name in names}
    np.testing.assert_allclose(list(zeros.values()), np.round(list(zeros.values())), atol=1e-6)  # whole counts
    assert round(sum(zeros.values())) == round(sparsity * sum(sizes.values()))
    for name in names:
        one_entry = 1.0 / sizes[name]
        assert sparsity - spread - one_entry <= shares[name] <= min(sparsity + spread, (1 + sparsity) / 2) + one_entry
        assert 0.0 <= shares[name] < 1.0
    # The higher the signal, the lower the sparsity.
    order = sorted(names, key=signal.get)
    assert all(shares[low] >= shares[high] - 1.0 / min(sizes.values()) for low, high in zip(order, order[1:]))


def test_equal_signals_give_every_layer_the_global_sparsity():
    shares = allocation_lib.bounded_shares({"a": 1.0, "b": 1.0}, {"a": 100, "b": 300}, 0.5, 0.2)
    assert shares == {"a": 0.5, "b": 0.5}


def test_owl_prunes_the_layer_with_more_outliers_less_by_the_spread_as_numpy_computes():
    model = two_layers()
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    x = np.random.default_rng(2).normal(size=(64, 8)).astype("float32")
    hidden = np.maximum(x @ kernels[0] + keras.ops.convert_to_numpy(model.layers[0].bias), 0.0)
    ratios = []
    for kernel, inputs in zip(kernels, (x, hidden)):
        scores = np.abs(kernel) * np.sqrt(np.sum(inputs.astype("float64") ** 2, axis=0))[:, None]
        ratios.append(np.mean(scores > 2.0 * scores.mean()))
    assert ratios[0] != ratios[1]
    result = rk.prune(model, sparsity=0.5, calibration_data=x, allocation=rk.pruning.OWL(multiplier=2.0, spread=0.25))
    more, fewer = ("a", "b") if ratios[0] > ratios[1] else ("b", "a")
    assert zeros_of(model) == {more: 16, fewer: 48}  # 64 x (0.5 -+ 0.25)
    assert result.zeros == 64


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_a_dict_prunes_each_layer_to_its_own_sparsity_by_its_own_ranking(score):
    model = two_layers()
    magnitudes = {layer.name: np.abs(keras.ops.convert_to_numpy(layer.kernel)) for layer in model.layers}
    rk.prune(model, allocation={"a": 0.25, "b": 0.75}, score=score,
             calibration_data=np.ones((4, 8), "float32") if score == "wanda" else None)
    assert zeros_of(model) == {"a": 16, "b": 48}
    if score == "magnitude":  # each layer's own smallest, not one threshold's
        for layer in model.layers:
            kept = keras.ops.convert_to_numpy(layer.kernel) != 0
            assert magnitudes[layer.name][~kept].max() <= magnitudes[layer.name][kept].min()


def test_uniform_gives_every_layer_the_sparsity_and_per_output_every_unit():
    model = two_layers()
    rk.prune(model, sparsity=0.5, allocation="uniform")
    assert zeros_of(model) == {"a": 32, "b": 32}
    model = two_layers()
    rk.prune(model, allocation={"a": 0.25, "b": 0.5}, ranking="per_output")
    for layer, per_unit in zip(model.layers, (2, 4)):
        np.testing.assert_array_equal(np.sum(keras.ops.convert_to_numpy(layer.kernel) == 0, axis=0), per_unit)


def test_sparsegpt_takes_a_dict_and_owl_as_per_layer_sparsities():
    model = two_layers()
    result = rk.prune(model, method="sparsegpt", calibration_data=X8,
                      allocation={"a": 0.25, "b": 0.75})
    assert zeros_of(model) == {"a": 16, "b": 48} and isinstance(result, rk.pruning.ReconstructionResult)
    x = np.random.default_rng(3).normal(size=(64, 8)).astype("float32")
    owl = rk.pruning.OWL(multiplier=2.0, spread=0.25)
    model = two_layers()
    first, second = (keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers)
    hidden = np.maximum(x @ first + keras.ops.convert_to_numpy(model.layers[0].bias), 0.0)
    wanda = {"a": np.abs(first) * np.linalg.norm(x.astype("float64"), axis=0)[:, None],
             "b": np.abs(second) * np.linalg.norm(hidden.astype("float64"), axis=0)[:, None]}
    shares = owl.sparsities(wanda, 0.5)
    rk.prune(model, sparsity=0.5, method="sparsegpt", calibration_data=x, allocation=owl)
    assert zeros_of(model) == {name: round(64 * share) for name, share in shares.items()}


def test_output_errors_are_each_layer_pruned_alone_against_the_unpruned_outputs_and_restore_the_weights():
    model = tiny_mlp(units=(8, 4))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    dense = keras.ops.convert_to_numpy(model(X))
    refs = list(rk.iter_weights(model, "kernel"))
    expected = {}
    for ref in refs:
        rk.prune(model, sparsity=0.5, layers=ref.path)
        expected[ref.name] = np.sum((keras.ops.convert_to_numpy(model(X)) - dense) ** 2) / np.sum(dense ** 2)
        model.set_weights(before)
    errors = layer_sensitivity.output_errors(
        model, refs, X, lambda ref: rk.prune(model, sparsity=0.5, layers=lambda layer: layer is ref.layer))
    assert errors.keys() == expected.keys()
    np.testing.assert_allclose(list(errors.values()), list(expected.values()), rtol=1e-5)
    for value, weight in zip(before, model.weights):
        np.testing.assert_array_equal(value, keras.ops.convert_to_numpy(weight))


def test_sensitivity_allocation_prunes_the_layer_that_moves_the_outputs_most_less():
    model = two_layers()
    errors = layer_sensitivity.output_errors(
        model, list(rk.iter_weights(model, "kernel")), X8,
        lambda ref: rk.prune(model, sparsity=0.5, layers=lambda layer: layer is ref.layer))
    # Around what one global magnitude threshold gives each layer (NumPy):
    magnitudes = np.concatenate([np.abs(keras.ops.convert_to_numpy(layer.kernel)).ravel() for layer in model.layers])
    below = magnitudes <= np.sort(magnitudes)[63]
    center = {"a": int(below[:64].sum()), "b": int(below[64:].sum())}
    rk.prune(model, sparsity=0.5, calibration_data=X8, allocation=rk.pruning.Sensitivity(spread=0.125))
    more, less = sorted(errors, key=errors.get, reverse=True)
    assert zeros_of(model) == {more: center[more] - 8, less: center[less] + 8}  # 64 x 0.125 each way


def test_output_errors_restore_the_weights_after_a_failure():
    model = tiny_mlp(units=(8, 4))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    refs = list(rk.iter_weights(model, "kernel"))

    def prune_then_fail(ref):
        rk.prune(model, sparsity=0.9, layers=lambda layer: layer is ref.layer)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        layer_sensitivity.output_errors(model, refs, X, prune_then_fail)
    for value, weight in zip(before, model.weights):
        np.testing.assert_array_equal(value, keras.ops.convert_to_numpy(weight))


def prune(**kwargs):
    return lambda m: rk.prune(m, **kwargs)


BAD_INPUT = [
    row("allocation-typo", prune(sparsity=0.5, allocation="even"), ValueError,
        "Invalid value for argument `allocation`: expected one of ['global', 'uniform', 'owl', 'sensitivity']"),
    row("allocation-number", prune(sparsity=0.5, allocation=0.5), ValueError, "Received: allocation=0.5"),
    row("allocation-empty-dict", prune(allocation={}), ValueError, "is empty"),
    row("allocation-key-not-str", prune(allocation={0: 0.5}), TypeError, "keys are layer names"),
    row("allocation-value-above-1", prune(allocation={"hidden0": 1.5, "out": 0.5}), ValueError,
        "allocation['hidden0']"),
    row("allocation-value-nan", prune(allocation={"hidden0": float("nan"), "out": 0.5}), ValueError,
        "allocation['hidden0']"),
    row("allocation-value-str", prune(allocation={"hidden0": "half", "out": 0.5}), TypeError,
        "allocation['hidden0']"),
    row("allocation-missing-layer", prune(allocation={"hidden0": 0.5}), ValueError, "Missing: ['out']"),
    row("allocation-unknown-layer", prune(allocation={"hidden0": 0.5, "out": 0.5, "extra": 0.1}), ValueError,
        "Not selected: ['extra']"),
    row("allocation-dict-and-sparsity", prune(sparsity=0.5, allocation={"hidden0": 0.5, "out": 0.5}), ValueError,
        "leave `sparsity` and `threshold` None"),
    row("allocation-with-threshold", prune(threshold=0.1, allocation="uniform"), ValueError,
        "Give `sparsity` instead. Received: threshold=0.1"),
    row("allocation-with-units", prune(sparsity=0.5, allocation="uniform", granularity="unit"), ValueError,
        "needs granularity='weight'"),
    row("allocation-with-pattern", prune(allocation="uniform", granularity="2:4"), ValueError,
        "needs granularity='weight'"),
    row("owl-without-calibration-data", prune(sparsity=0.5, allocation="owl"), ValueError,
        "(or allocation='owl' or 'sensitivity') needs `calibration_data`"),
    row("sensitivity-without-calibration-data", prune(sparsity=0.5, allocation="sensitivity"), ValueError,
        "needs `calibration_data`"),
    row("uniform-with-calibration-data", prune(sparsity=0.5, allocation="uniform", calibration_data=X), ValueError,
        "only it reads them. Received: score='magnitude', allocation='uniform', calibration_data=ndarray"),
    row("owl-wrong-shape-data", prune(sparsity=0.5, allocation="owl", calibration_data=np.ones((8, 3), "float32")),
        ValueError, "`calibration_data`: the model cannot be called on it"),
    row("owl-nan-data", prune(sparsity=0.5, allocation="owl", calibration_data=np.full((8, 6), np.nan, "float32")),
        ValueError, "NaN or inf"),
    row("owl-multiplier-0", lambda m: rk.prune(m, sparsity=0.5, calibration_data=X,
                                               allocation=rk.pruning.OWL(multiplier=0)), ValueError, "`multiplier`"),
    row("owl-spread-above-1", lambda m: rk.prune(m, sparsity=0.5, calibration_data=X,
                                                 allocation=rk.pruning.OWL(spread=2)), ValueError, "`spread`"),
    row("sensitivity-spread-negative", lambda m: rk.prune(m, sparsity=0.5, calibration_data=X,
                                                          allocation=rk.pruning.Sensitivity(spread=-0.1)),
        ValueError, "`spread`"),
    row("sparsegpt-owl-without-data", prune(sparsity=0.5, method="sparsegpt", allocation="owl"), ValueError,
        "calibration_data=None"),
    row("sparsegpt-owl-without-sparsity", prune(method="sparsegpt", allocation="owl", calibration_data=X),
        ValueError, "needs `sparsity`"),
    row("sparsegpt-owl-with-pattern", prune(method="sparsegpt", allocation="owl", granularity="2:4",
                                            calibration_data=X), ValueError, "needs granularity='weight'"),
    row("sparsegpt-dict-unknown-layer", prune(method="sparsegpt", allocation={"hidden0": 0.5, "x": 0.5},
                                              calibration_data=X), ValueError, "Not selected: ['x']"),
    row("sparsegpt-uniform-with-pattern", prune(method="sparsegpt", allocation="uniform", granularity="2:4",
                                                calibration_data=X), ValueError, "needs granularity='weight'"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
