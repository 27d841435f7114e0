"""pruning.sensitivity: each layer pruned alone at each level, the metric
drop per layer, the weights unchanged after."""

import json

import keras
import numpy as np
import pytest

import keras_regkit as rk

from conftest import assert_model_unchanged, assert_refused_and_unchanged, model_state, row, tiny_data, tiny_mlp

X, Y = tiny_data(n=32)


def compiled_mlp(metrics=("mae",)):
    model = tiny_mlp(units=(8, 4))
    model.compile("sgd", "mse", metrics=list(metrics))
    return model


def test_the_table_is_a_manual_prune_evaluate_restore_per_layer_and_level():
    model = compiled_mlp()
    before = model.get_weights()
    base = model.evaluate(X, Y, verbose=0, return_dict=True)["mae"]
    expected = {}
    for name in ("hidden0", "out"):
        row_values = []
        for level in (0.5, 0.9):
            rk.prune(model, sparsity=level, layers=name)
            row_values.append(model.evaluate(X, Y, verbose=0, return_dict=True)["mae"])
            model.set_weights(before)
        expected[name] = row_values
    result = rk.pruning.sensitivity(model, (X, Y), levels=(0.5, 0.9))
    assert result.metric == "mae" and result.lower_is_better and result.levels == (0.5, 0.9)
    np.testing.assert_allclose(result.base, base, rtol=1e-6)
    for name, values in expected.items():
        np.testing.assert_allclose(result.values[name], values, rtol=1e-6)
        np.testing.assert_allclose(result.drops()[name], np.array(values) - base, rtol=1e-5)
    assert result.params == {"hidden0": 48, "out": 32}
    for value, weight in zip(before, model.get_weights()):
        np.testing.assert_array_equal(value, weight)


def test_an_accuracy_drop_is_its_fall_and_the_loss_is_used_without_metrics():
    model = compiled_mlp(metrics=())
    assert rk.pruning.sensitivity(model, (X, Y), levels=(0.5,)).metric == "loss"
    model = tiny_mlp(units=(8, 4))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    labels = np.argmax(keras.ops.convert_to_numpy(model(X)), axis=-1)  # the model is right on every sample
    result = rk.pruning.sensitivity(model, (X, labels), levels=(1.0,))
    assert result.metric == "accuracy" and not result.lower_is_better and result.base == 1.0
    assert all(drop[0] == pytest.approx(1.0 - result.values[name][0]) for name, drop in result.drops().items())


def test_table_dict_and_plot():
    result = rk.pruning.sensitivity(compiled_mlp(), (X, Y), levels=(0.5, 0.9))
    table = str(result)
    assert "hidden0" in table and "90%" in table and table == result.to_table()
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["layers"]["out"]["values"] == list(result.values["out"]) and as_dict["metric"] == "mae"
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = result.plot()
    assert len(ax.lines) == 2 + 1  # a line per layer, and the zero line


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    import sys

    result = rk.pruning.sensitivity(compiled_mlp(), (X, Y), levels=(0.5,))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="needs matplotlib: pip install matplotlib"):
        result.plot()


def test_a_dataset_and_wanda_and_the_reconstruction_read_the_data_inputs():
    tf = pytest.importorskip("tensorflow")
    model = compiled_mlp()
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    from_dataset = rk.pruning.sensitivity(model, dataset, levels=(0.5,)).values
    from_arrays = rk.pruning.sensitivity(model, (X, Y), levels=(0.5,)).values
    for name, values in from_arrays.items():
        np.testing.assert_allclose(from_dataset[name], values, rtol=1e-5)
    for kwargs in ({"score": "wanda"}, {"method": "sparsegpt"}):
        result = rk.pruning.sensitivity(model, (X, Y), levels=(0.5,), **kwargs)
        assert set(result.values) == {"hidden0", "out"}


def test_the_weights_are_put_back_when_an_evaluation_fails_midway():
    model = compiled_mlp()
    before = model_state(model)
    calls = []
    original = model.evaluate

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the base, one pruned layer, then a failure with another pruned
            raise RuntimeError("interrupted")
        return original(*args, **kwargs)

    model.evaluate = evaluate
    with pytest.raises(RuntimeError, match="interrupted"):
        rk.pruning.sensitivity(model, (X, Y), levels=(0.5, 0.9))
    del model.evaluate
    assert_model_unchanged(before, model_state(model))


def sensitivity(**kwargs):
    def call(model):
        model.compile("sgd", "mse", metrics=["mae"])
        return rk.pruning.sensitivity(model, **{"data": (X, Y), **kwargs})

    return call


def empty_dataset():
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((X[:0], Y[:0])).batch(8)


BAD_INPUT = [
    row("levels-empty", sensitivity(levels=()), ValueError, "argument `levels`: expected a non-empty list"),
    row("levels-a-number", sensitivity(levels=0.5), ValueError, "argument `levels`"),
    row("levels-above-1", sensitivity(levels=(0.5, 1.5)), ValueError, "Received: levels=1.5"),
    row("levels-zero", sensitivity(levels=(0.0,)), ValueError, "each must be in (0, 1]"),
    row("levels-negative", sensitivity(levels=(-0.5,)), ValueError, "levels"),
    row("levels-str", sensitivity(levels=("half",)), TypeError, "levels"),
    row("data-empty", sensitivity(data=(X[:0], Y[:0])), ValueError, "argument `data`: it holds no samples"),
    row("data-empty-dataset", lambda m: sensitivity(data=empty_dataset())(m), ValueError,
        "argument `data`: it holds no samples"),
    row("data-wrong-shape", sensitivity(data=(X[:, :3], Y)), ValueError,
        "argument `data`: model.evaluate cannot read it"),
    row("metric-unknown", sensitivity(metric="accuracy"), ValueError,
        "argument `metric`: model.evaluate reports ['loss', 'mae']. Received: metric='accuracy'"),
    row("not-compiled", lambda m: rk.pruning.sensitivity(m, (X, Y)), ValueError, "call `model.compile(...)` first"),
    row("selector-matches-nothing", sensitivity(layers="nothing*"), ValueError, "matched no layer"),
    row("score-typo", sensitivity(score="wandaa"), ValueError, "argument `score`"),
    row("method-typo", sensitivity(method="obs"), ValueError, "argument `method`"),
    row("batch-size-0", sensitivity(batch_size=0), ValueError, "batch_size"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
