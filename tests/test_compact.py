import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk

from conftest import SubclassedModel, assert_refused_and_unchanged, kill, row, to_numpy, unbuilt

L = keras.layers


def randomize_batch_norm(layer, seed=0):
    rng = np.random.default_rng(seed)
    n = layer.gamma.shape[0]
    layer.set_weights(
        [rng.uniform(0.5, 1.5, n), rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 1.5, n)]
    )


def assert_same_outputs(model, result, x):
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    actual = keras.ops.convert_to_numpy(result.model(x, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def data(*shape, seed=1):
    return np.random.default_rng(seed).normal(size=(4,) + shape).astype("float32")


@keras.saving.register_keras_serializable(package="test_compact")
class ScaledDense(keras.layers.Dense):
    def call(self, inputs):
        return 2.0 * super().call(inputs)


def test_sequential_mlp_loses_dead_units_and_keeps_its_outputs():
    model = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", name="h0"),
        L.Dense(5, activation="tanh", name="h1"),
        L.Dense(4, name="out"),
    ])
    kill(model.get_layer("h0"), [1, 4, 6], biases=[0.5, -0.3, 0.2])
    kill(model.get_layer("h1"), [2], biases=[0.7])
    before = [w.copy() for w in model.get_weights()]

    result = rk.compact(model)

    assert isinstance(result.model, keras.Sequential)
    assert result.units == {"h0": (8, 5), "h1": (5, 4), "out": (4, 4)}
    assert result.dead == {"h0": 3, "h1": 1, "out": 0}
    # 56 + 45 + 24 before; (6*5 + 5) + (5*4 + 4) + (4*4 + 4) after.
    assert (result.params_before, result.params_after) == (125, 79)
    assert result.removed == 4 and result.skipped == {} and result.kept == {}
    assert_same_outputs(model, result, data(6))
    # The original is untouched.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_functional_cnn_folds_constants_through_batch_norm_relu_and_flatten():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(5, 3, name="c2")(x)  # padding="valid": folding is exact
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    randomize_batch_norm(model.get_layer("bn"))
    kill(model.get_layer("c1"), [1, 4], biases=[0.8, -0.6])
    kill(model.get_layer("c2"), [0, 3], biases=[0.4, 1.1])

    result = rk.compact(model)

    assert result.units == {"c1": (6, 4), "c2": (5, 3), "out": (3, 3)}
    # c1 -56, bn -8, c2 275 -> 111, out (80 -> 48 rows) -96.
    assert (result.params_before, result.params_after) == (710, 386)
    assert result.model.get_layer("bn").gamma.shape == (4,)
    assert_same_outputs(model, result, data(8, 8, 3))


def test_consumer_without_bias_gets_one_when_a_folded_constant_is_nonzero():
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, use_bias=False, name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(3, 3, use_bias=False, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    bn = model.get_layer("bn")
    randomize_batch_norm(bn)
    # Dead filter 2 outputs 0; BatchNormalization turns that into 1.5 - ...
    bn.beta.assign(np.full(4, 1.5, "float32"))
    bn.moving_mean.assign(np.zeros(4, "float32"))
    kill(model.get_layer("c1"), [2])

    result = rk.compact(model)

    assert result.units["c1"] == (4, 3)
    assert result.model.get_layer("c2").use_bias
    # c1 72 -> 54, bn 16 -> 12, c2 108 -> 81 + 3 bias, out 8.
    assert (result.params_before, result.params_after) == (204, 158)
    assert_same_outputs(model, result, data(6, 6, 2))


def test_consumer_without_bias_stays_without_when_the_constant_is_zero():
    model = keras.Sequential([
        keras.Input((5,)),
        L.Dense(4, activation="relu", use_bias=False, name="h"),
        L.Dense(2, use_bias=False, name="out"),
    ])
    kill(model.get_layer("h"), [0])

    result = rk.compact(model)

    assert not result.model.get_layer("out").use_bias
    assert (result.params_before, result.params_after) == (28, 21)
    assert_same_outputs(model, result, data(5))


def test_conv1d_with_pooling_and_strides():
    inp = keras.Input((12, 2))
    x = L.Conv1D(5, 3, activation="relu", name="c1")(inp)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(4, 2, strides=2, name="c2")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    kill(model.get_layer("c1"), [0, 3], biases=[0.4, 0.9])
    kill(model.get_layer("c2"), [1], biases=[0.3])

    result = rk.compact(model)

    assert result.units == {"c1": (5, 3), "c2": (4, 3), "out": (3, 3)}
    # c1 35 -> 21, c2 44 -> 21, out 15 -> 12.
    assert (result.params_before, result.params_after) == (94, 54)
    assert_same_outputs(model, result, data(12, 2))


def test_add_removes_a_channel_only_where_every_branch_is_dead():
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, name="a")(inp)
    b = L.Conv2D(4, 3, name="b")(inp)
    x = L.Add(name="add")([a, b])
    x = L.Conv2D(3, 2, name="c")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    kill(model.get_layer("a"), [1, 2], biases=[0.5, 0.1])
    kill(model.get_layer("b"), [1], biases=[-0.2])  # constants add: 0.3

    result = rk.compact(model)

    assert result.units["a"] == (4, 3) and result.units["b"] == (4, 3)
    assert "'b'" in result.kept["a"]  # channel 2 is alive in b
    # a, b 76 -> 57 each; c 51 -> 39; out 8.
    assert (result.params_before, result.params_after) == (211, 161)
    assert_same_outputs(model, result, data(6, 6, 2))


def test_concatenate_keeps_each_branch_at_its_channel_offset():
    inp = keras.Input((5,))
    a = L.Dense(4, activation="relu", name="a")(inp)
    b = L.Dense(3, name="b")(inp)
    x = L.Concatenate(name="cat")([b, a])
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    kill(model.get_layer("a"), [1], biases=[0.5])
    kill(model.get_layer("b"), [0, 2], biases=[0.3, -0.2])

    result = rk.compact(model)

    assert result.units == {"a": (4, 3), "b": (3, 1), "out": (2, 2)}
    # a 24 -> 18, b 18 -> 6, out 16 -> 10.
    assert (result.params_before, result.params_after) == (58, 34)
    assert_same_outputs(model, result, data(5))


def test_depthwise_and_separable_convs_slice_channels_and_filters():
    inp = keras.Input((7, 7, 2))
    x = L.Conv2D(5, 1, name="c")(inp)
    x = L.DepthwiseConv2D(2, depth_multiplier=2, name="dw")(x)
    x = L.SeparableConv2D(4, 2, depth_multiplier=2, name="sep")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    # Channels 0 and 3 of c are constant; through dw (valid) so are dw's
    # outputs 0, 1, 6, 7, which sep's depthwise and pointwise kernels read.
    kill(model.get_layer("c"), [0, 3], biases=[0.5, -1.0])
    dw = model.get_layer("dw")
    dw.bias.assign(np.linspace(-1, 1, 10).astype("float32"))
    kernel = to_numpy(dw.kernel)
    kernel[..., 1, 0] = 0.0  # dead, but its input channel is alive: kept
    dw.kernel.assign(kernel)
    kill(model.get_layer("sep"), [2], biases=[0.3])

    result = rk.compact(model)

    assert result.units == {"c": (5, 3), "dw": (10, 6), "sep": (4, 3), "out": (2, 2)}
    assert "dw" in result.kept
    assert result.model.get_layer("sep").depthwise_kernel.shape == (2, 2, 6, 2)
    assert result.model.get_layer("sep").pointwise_kernel.shape == (1, 1, 12, 3)
    # c 15 -> 9, dw 50 -> 30, sep 164 -> 87, out 10 -> 8.
    assert (result.params_before, result.params_after) == (239, 134)
    assert_same_outputs(model, result, data(7, 7, 2))


@pytest.mark.parametrize(
    "consumer",
    [
        lambda: L.Conv2D(3, 3, padding="same", name="c2"),
        lambda: L.DepthwiseConv2D(3, padding="same", name="c2"),
        lambda: L.SeparableConv2D(3, 3, padding="same", name="c2"),
    ],
    ids=["conv", "depthwise", "separable"],
)
def test_same_padding_consumer_takes_only_constants_that_are_zero(consumer):
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = consumer()(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    # Constant 0 meets zero padding exactly; 0.5 would not at the borders.
    kill(model.get_layer("c1"), [0, 1], biases=[0.0, 0.5])

    result = rk.compact(model)

    assert result.units["c1"] == (4, 3)
    assert "c1" in result.kept
    assert_same_outputs(model, result, data(6, 6, 2))


def test_reshape_removes_a_channel_only_when_its_units_share_one_constant():
    inp = keras.Input((4,))
    x = L.Dense(12, name="d")(inp)
    x = L.Reshape((4, 3))(x)  # unit u lands in channel u % 3
    x = L.Conv1D(2, 2, name="c")(x)
    x = L.Flatten()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    d = model.get_layer("d")
    kill(d, [1, 4, 7, 10], biases=[0.5] * 4)  # channel 1: constant 0.5
    kill(d, [2, 5, 8, 11], biases=[0.1, 0.2, 0.3, 0.4])  # varies along the axis

    result = rk.compact(model)

    assert result.units["d"] == (12, 8)
    assert result.dead["d"] == 8 and "d" in result.kept
    # d 60 -> 40, c 14 -> 10, out 14.
    assert (result.params_before, result.params_after) == (88, 64)
    assert_same_outputs(model, result, data(4))


def test_output_units_are_never_removed():
    model = keras.Sequential([
        keras.Input((5,)),
        L.Dense(4, name="h"),
        L.Dense(3, name="out"),
        L.Activation("sigmoid"),
    ])
    kill(model.get_layer("h"), [0, 1, 2, 3], biases=[0.1, 0.2, 0.3, 0.4])
    kill(model.get_layer("out"), [1], biases=[0.2])

    result = rk.compact(model)

    assert result.units == {"h": (4, 1), "out": (3, 3)}  # a layer keeps one unit
    assert "model output" in result.kept["out"]
    assert result.model.output_shape == (None, 3)
    assert_same_outputs(model, result, data(5))


def test_layers_it_cannot_reason_about_are_skipped_and_keep_their_channels():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="inner")
    inp = keras.Input((5,))
    a = L.LayerNormalization(name="ln")(L.Dense(4, name="a")(inp))
    b = inner(L.Dense(4, name="b")(inp))
    c = ScaledDense(4, name="scaled")(inp)
    d = L.Activation("softmax", name="soft")(L.Dense(4, name="d")(inp))
    x = L.Concatenate()([a, b, c, d])
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    for name in ("a", "b", "scaled", "d"):
        kill(model.get_layer(name), [0], biases=[0.7])

    result = rk.compact(model)

    assert set(result.skipped) == {"ln", "inner", "scaled", "soft"}
    assert "nested model" in result.skipped["inner"]
    assert "softmax" in result.skipped["soft"]
    assert all(result.units[n] == (4, 4) for n in ("a", "b", "scaled", "d"))
    assert "consumer 'ln' is skipped" in result.kept["a"]
    assert result.params_after == result.params_before
    assert_same_outputs(model, result, data(5))


class InnerBlock(keras.Model):
    """A subclassed model nested in a Functional one: its config holds no name."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_a_nested_subclassed_model_is_skipped_and_rebuilt_from_custom_objects():
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(2, name="out")(InnerBlock(name="inner")(L.Dense(4, name="a")(inp))))
    kill(model.get_layer("a"), [0], biases=[0.7])

    with pytest.raises(TypeError, match="InnerBlock"):  # Keras' own: which class it cannot find
        rk.compact(model)
    result = rk.compact(model, custom_objects={"InnerBlock": InnerBlock})

    assert "nested model" in result.skipped["inner"]
    assert result.units["a"] == (4, 4)
    assert_same_outputs(model, result, data(5))


def test_softmax_dense_keeps_its_dead_units():
    model = keras.Sequential([
        keras.Input((5,)),
        L.Dense(4, activation="softmax", name="h"),  # mixes its units
        L.Dense(2, name="out"),
    ])
    kill(model.get_layer("h"), [1], biases=[0.3])

    result = rk.compact(model)

    assert result.units["h"] == (4, 4)
    assert "not elementwise" in result.kept["h"]
    assert_same_outputs(model, result, data(5))


def test_str_is_a_table_of_layers_and_params():
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="h"), L.Dense(1, name="out")])
    kill(model.get_layer("h"), [0, 2], biases=[0.1, 0.2])
    text = str(rk.compact(model))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "units", "dead", "after", "note"]
    assert lines[1].split() == ["h", "4", "2", "2"]
    assert lines[-1] == "params: 21 -> 11 (-47.6%)"


def test_compacted_model_saves_and_reloads_without_keras_regkit(tmp_path):
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, kernel_regularizer=rk.regularizers.L1(1e-3), name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("relu")(x)
    x = L.Flatten()(x)
    out = L.Dense(2, kernel_regularizer=keras.regularizers.L2(1e-3), name="out")(x)
    model = keras.Model(inp, out)
    randomize_batch_norm(model.get_layer("bn"))
    kill(model.get_layer("c1"), [1], biases=[0.4])
    rk.prune(model, threshold=0.0, hold=True)  # HoldZeros on every kernel

    result = rk.compact(model)

    assert result.units["c1"] == (4, 3)
    config = json.dumps(result.model.get_config())
    assert "keras_regkit" not in config
    assert '"L2"' in config  # Keras' own regularizer stays
    result.model.save(tmp_path / "compact.keras")
    model.save(tmp_path / "original.keras")
    x = data(6, 6, 2)
    np.save(tmp_path / "x.npy", x)
    # keras_regkit can't be imported there: the original model (which names
    # rk.regularizers.L1) must fail to load, the compacted one must not.
    code = textwrap.dedent("""
        import sys
        sys.modules["keras_regkit"] = None
        import keras, numpy as np
        model = keras.saving.load_model("compact.keras")
        np.save("y.npy", keras.ops.convert_to_numpy(model(np.load("x.npy"))))
        try:
            keras.saving.load_model("original.keras")
            print("ORIGINAL LOADED")
        except Exception:
            print("ORIGINAL FAILED")
        assert all(m is None for k, m in sys.modules.items() if k.startswith("keras_regkit"))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ORIGINAL FAILED" in run.stdout
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "model, error, match",
    [
        ("model.keras", TypeError, r"argument `model`.*Received: model='model.keras' of type str"),
        (L.Dense(2), TypeError, r"expected a built keras.Model.*of type Dense"),
        (lambda: keras.Sequential([L.Dense(2)]), ValueError, r"no known input shape"),
        (lambda: SubclassedModel(), ValueError, r"subclassed models"),
    ],
    ids=["string", "layer", "unbuilt_sequential", "subclassed"],
)
def test_bad_model_is_an_error_naming_the_argument(model, error, match):
    model = model() if callable(model) and not isinstance(model, keras.layers.Layer) else model
    with pytest.raises(error, match=match):
        rk.compact(model)


def test_a_moved_functional_class_is_named_not_taken_for_a_subclassed_model(monkeypatch):
    model = keras.Model(*(lambda x: (x, L.Dense(2)(x)))(keras.Input((3,))))
    monkeypatch.setitem(sys.modules, "keras.src.models.functional", None)
    with pytest.raises(rk._keras.FenceError, match=r"keras\.src\.models\.functional\.Functional.*has moved it"):
        rk.compact(model)


# -- bad and unusual input: the tables' helpers are in conftest -----------------

class UnregisteredDense(keras.layers.Dense):
    pass


def model_with_unregistered_layer():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="o")(UnregisteredDense(4, name="h")(inputs)))
    kill(model.get_layer("h"), [1, 3])
    return model


BAD_INPUT = [
    # A model that is not built has no weights: say so, don't blame the selector.
    row("compact-unbuilt", lambda m: rk.compact(unbuilt()), ValueError, "keras.Input"),
    # Not a model.
    row("compact-model-str", lambda m: rk.compact("m"), TypeError, "model"),
    row("compact-custom_objects-list", lambda m: rk.compact(m, custom_objects=[rk.regularizers.L1]), TypeError, "custom_objects"),
    row("compact-custom_objects-not-a-class", lambda m: rk.compact(m, custom_objects={"MyDense": 3}), TypeError,
        "custom_objects={'MyDense': 3}"),
    row("compact-custom_objects-key-not-a-name", lambda m: rk.compact(m, custom_objects={3: keras.layers.Dense}),
        TypeError, "mapping class names to classes"),
    # Keras' own message names the class and how to make it known.
    row("compact-unregistered-layer-class", lambda m: rk.compact(model_with_unregistered_layer()), TypeError,
        "Could not locate class 'UnregisteredDense'"),
    row("compact-subclassed", lambda m: rk.compact(SubclassedModel()), ValueError, "model"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
