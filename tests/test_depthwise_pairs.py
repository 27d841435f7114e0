"""A unit read one to one by a depthwise convolution (a MobileNet's
expansion and depthwise layers) is one unit to the cut, and `compact`
removes such a pair whole: its channel meets no padding it cannot fold."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import units as units_lib

from conftest import kill, to_numpy

L = keras.layers


def assert_same_outputs(model, result, x):
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(result.model(x, training=False)), expected,
                               rtol=1e-5, atol=1e-5)


def images(seed=1):
    return np.random.default_rng(seed).normal(size=(4, 8, 8, 3)).astype("float32")


def inverted_residual(pad=True):
    """Expansion (1x1) -> BatchNormalization -> ReLU6 -> [zero padding] ->
    depthwise 3x3 -> projection (1x1, `padding="same"` as MobileNetV2's)."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="expand")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu")(x)
    if pad:
        x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.DepthwiseConv2D(3, padding="valid" if pad else "same", name="dw")(x)
    x = L.Conv2D(4, 1, padding="same", name="project")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.zeros(6, "float32"))
    bn.beta.assign(np.full(6, 0.5, "float32"))  # a dead unit's constant: relu6(0.5), not 0
    return model


def kill_depthwise(layer, channels, bias=0.3):
    kernel = to_numpy(layer.kernel)
    kernel[:, :, channels, :] = 0.0
    layer.kernel.assign(kernel)
    values = to_numpy(layer.bias)
    values[channels] = bias
    layer.bias.assign(values)


# -- the rule: which layer a depthwise convolution reads one to one ----------

def test_channel_source_walks_through_layers_that_keep_channels_apart():
    model = inverted_residual()
    assert units_lib.channel_source(model.get_layer("dw")) is model.get_layer("expand")
    assert units_lib.channel_source(model.get_layer("project")) is None  # not a depthwise convolution


@pytest.mark.parametrize("between", ["softmax", "input", "shared"])
def test_channel_source_is_none_where_channels_mix_or_the_call_is_ambiguous(between):
    inp = keras.Input((8, 8, 3))
    dw = L.DepthwiseConv2D(3, name="dw")
    if between == "input":
        out = dw(inp)
    else:
        x = L.Conv2D(3, 1, name="c")(inp)
        x = L.Activation("softmax")(x) if between == "softmax" else x
        out = dw(x)
        if between == "shared":
            out = L.Add()([out, dw(L.Conv2D(3, 1)(inp))])
    keras.Model(inp, out)
    assert units_lib.channel_source(dw) is None


# -- the cut: a pair is one unit ----------------------------------------------

def test_unit_granularity_cuts_a_unit_with_the_depthwise_channel_that_reads_it():
    model = inverted_residual()
    refs = granularity_lib.Units().select(model, "*")
    # The depthwise kernel (a weight kind the default selection leaves out) comes with the expansion.
    assert [ref.layer.name for ref in refs] == ["expand", "project", "dw"]
    assert granularity_lib.Units().count_dead(refs) == (0, 6 + 4)  # a pair counts once

    rk.prune(model, sparsity=0.5, granularity="unit")

    expand = (to_numpy(model.get_layer("expand").kernel) == 0).all(axis=(0, 1, 2))
    depthwise = (to_numpy(model.get_layer("dw").kernel) == 0).all(axis=(0, 1, 3))
    assert expand.any()
    np.testing.assert_array_equal(expand, depthwise)


def test_a_pair_scores_both_its_parts_each_against_its_own_layer():
    model = inverted_residual()
    expand, dw = model.get_layer("expand"), model.get_layer("dw")
    kernel = np.full(expand.kernel.shape, 10.0, "float32")
    kernel[..., 0] = 9.0  # unit 0 the weakest expansion unit
    expand.kernel.assign(kernel)
    kernel = np.full(dw.kernel.shape, 0.1, "float32")  # a layer of smaller weights
    kernel[:, :, 4, :] = 0.001  # channel 4 by far the weakest depthwise channel
    dw.kernel.assign(kernel)

    rk.prune(model, sparsity=0.1, granularity="unit", layers="expand")

    # Unit 4: weakest on the mean of its parts' scores, each relative to its
    # layer. Pooled raw, the expansion's larger weights would decide (unit 0).
    assert (to_numpy(expand.kernel) == 0).all(axis=(0, 1, 2)).tolist() == [False] * 4 + [True, False]


# -- compact: a dead pair goes whole ------------------------------------------

@pytest.mark.parametrize("pad", [True, False], ids=["zero_padding_layer", "same_padding"])
def test_compact_removes_a_dead_pair_whose_constant_is_not_zero(pad):
    model = inverted_residual(pad)
    kill(model.get_layer("expand"), [1, 4])  # constant relu6(0.5): not 0, so the padding is not exact
    kill_depthwise(model.get_layer("dw"), [1, 4])

    result = rk.compact(model)

    assert result.units["expand"] == (6, 4) and result.units["dw"] == (6, 4)
    assert_same_outputs(model, result, images())


def test_a_live_unit_that_only_dead_depthwise_channels_read_goes():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(5, 1, name="c")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    dw = model.get_layer("dw")
    kernel = to_numpy(dw.kernel)
    kernel[:, :, 2, :] = 0.0  # both outputs of input channel 2: unit 2 of c is read by nothing
    kernel[:, :, 3, 0] = 0.0  # one of channel 3's two: still read
    dw.kernel.assign(kernel)

    result = rk.compact(model)

    assert result.units["c"] == (5, 4)
    assert result.model.get_layer("dw").kernel.shape == (3, 3, 4, 2)
    assert_same_outputs(model, result, images())


@pytest.mark.parametrize("strides", [1, 2])
def test_a_1x1_same_padding_consumer_takes_any_constant(strides):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.Conv2D(3, 1, strides=strides, padding="same", name="c2")(x)
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    kill(model.get_layer("c1"), [0, 1], biases=[0.0, 0.5])  # a 1x1 window never meets padding

    result = rk.compact(model)

    assert result.units["c1"] == (4, 2) and "c1" not in result.kept
    assert_same_outputs(model, result, images())


@pytest.mark.parametrize("producer", ["model_input", "softmax_conv", "softmax_layer", "nested_model"])
def test_a_dead_depthwise_channel_leaves_alone_what_its_producer_cannot_drop(producer):
    # The channel it does not read goes only where the producer can drop it:
    # not a model input, not one unit of a softmax, not a skipped nested model.
    inp = keras.Input((8, 8, 3))
    if producer == "model_input":
        x = inp
    elif producer == "softmax_conv":
        x = L.Conv2D(4, 1, activation="softmax", name="c")(inp)
    elif producer == "softmax_layer":
        x = L.Activation("softmax")(L.Conv2D(4, 1, name="c")(inp))
    else:
        inner = keras.Input((8, 8, 3))
        x = keras.Model(inner, L.Conv2D(4, 1)(inner), name="inner")(inp)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    kill_depthwise(model.get_layer("dw"), [1])

    result = rk.compact(model)

    assert result.units["dw"][1] == result.units["dw"][0]  # its input channel stays, so it does
    assert_same_outputs(model, result, images())


def test_units_read_by_two_depthwise_layers_form_one_group():
    inp = keras.Input((8, 8, 3))
    expanded = L.ReLU(name="relu")(L.Conv2D(6, 1, name="expand")(inp))
    branches = [L.DepthwiseConv2D(k, padding="same", name=f"dw{k}")(expanded) for k in (3, 5)]
    x = L.Conv2D(4, 1, name="project")(L.Add()(branches))
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    granularity = granularity_lib.Units()
    refs = granularity.select(model, "*")
    assert granularity.count_dead(refs) == (0, 6 + 4)

    rk.prune(model, sparsity=0.5, granularity="unit")

    dead = [(to_numpy(model.get_layer(name).kernel) == 0).all(axis=(0, 1, 3 if name != "expand" else 2))
            for name in ("expand", "dw3", "dw5")]
    assert dead[0].any()
    np.testing.assert_array_equal(dead[0], dead[1])
    np.testing.assert_array_equal(dead[0], dead[2])


def test_channel_source_of_a_sequential_built_with_add():
    # Each `add` rebuilds the Sequential's graph: the layers keep a call per rebuild.
    model = keras.Sequential()
    model.add(keras.Input((8, 8, 3)))
    for layer in (L.Conv2D(6, 1, name="expand"), L.ReLU(), L.DepthwiseConv2D(3, name="dw"),
                  L.GlobalAveragePooling2D(), L.Dense(2)):
        model.add(layer)
    assert units_lib.channel_source(model.get_layer("dw")) is model.get_layer("expand")
