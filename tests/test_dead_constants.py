"""Dead units' small constants read by zero-padded depthwise convolutions
(`pruning/dead_constants.py`): lifted to the middle of their tensor's range,
the depthwise slices divided by the same factor, the float outputs equal,
and full int8 no longer loses them."""

import contextlib

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.deploy import refresh_batch_norm
from keras_regkit.pruning import dead_constants
from keras_regkit.pruning.dead_constants import LIFT_TO, lift_dead_constants
from tests.conftest import converts

DEAD, CONSTANT = 1, 0.02  # the dead unit, and the small constant its BatchNormalization gives it


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable).copy()


def _block(activation="relu6", reader="depthwise", branch=None, constant=CONSTANT, seed=0, multiplier=1,
           norm_axis=-1):
    """An inverted-residual block's first half (expand, BatchNormalization,
    activation, zero-padded depthwise convolution, BatchNormalization) with
    unit `DEAD` of the expansion cut, its constant `constant`; the output is
    the depthwise BatchNormalization's, where full int8 shows the constant's
    rounding. Returns the model and its inputs."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 1, use_bias=False, name="expand")(inputs)
    h = keras.layers.BatchNormalization(axis=norm_axis, name="expand_bn")(h)
    h = keras.layers.ReLU(6.0, name="act")(h) if activation == "relu6" else keras.layers.Activation(
        activation, name="act")(h)
    if reader in ("depthwise", "shared"):
        depthwise = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=multiplier, use_bias=False,
                                                 name="reader")
        out = depthwise(h)
        if reader == "shared":  # called on another tensor too, which would see the divided slice
            out = keras.layers.Add()([out, depthwise(inputs[..., :1] * keras.ops.ones((1, 1, 1, 4)))])
    else:  # a regular convolution: its per-channel int8 weight scales span all its input channels
        out = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="reader")(h)
    if branch == "add":  # the constant also reaches an Add
        out = keras.layers.Add()([out, h])
    elif branch == "conv":  # and a 1x1 convolution, whose output an Add reads
        out = keras.layers.Add()([out, keras.layers.Conv2D(4, 1, name="side")(h)])
    elif branch == "nested":  # the depthwise convolution is also called inside a nested model
        nested_in = keras.Input((8, 8, 4))
        nested = keras.Model(nested_in, depthwise(nested_in), name="nested")
        out = keras.layers.Add()([out, nested(keras.layers.Conv2D(4, 1, name="side")(inputs))])
    outputs = keras.layers.BatchNormalization(name="reader_bn")(out)
    # As a feature extractor's: the activation itself is an output too.
    model = keras.Model(inputs, [outputs, h] if branch == "output" else outputs)
    x = np.random.default_rng(seed).normal(1.0, 2.0, size=(256, 8, 8, 3)).astype("float32")
    kernel = _numpy(model.get_layer("expand").kernel)
    kernel[..., DEAD] = 0.0
    model.get_layer("expand").kernel.assign(kernel)
    beta = _numpy(model.get_layer("expand_bn").beta)
    beta[DEAD] = constant  # (with another `norm_axis`, a row of the image: the case to leave alone)
    model.get_layer("expand_bn").beta.assign(beta)
    refresh_batch_norm(model, x)  # as the shrink leaves it
    return model, x


def _top(model, x):
    """The largest value of the tensor the depthwise convolution reads."""
    return float(np.max(np.abs(_numpy(keras.Model(model.input, model.get_layer("act").output)(x)))))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_small_dead_constant_is_lifted_exactly(multiplier):
    model, x = _block(multiplier=multiplier)
    before = _numpy(model(x))
    kernel = _numpy(model.get_layer("reader").kernel)
    top = _top(model, x)
    assert lift_dead_constants(model, x) == 1
    factor = LIFT_TO * top / CONSTANT
    assert factor > 50  # the case the rule is for: a constant far below its tensor's range
    beta = _numpy(model.get_layer("expand_bn").beta)
    np.testing.assert_allclose(beta[DEAD], LIFT_TO * top, rtol=1e-5)
    after_kernel = _numpy(model.get_layer("reader").kernel)
    np.testing.assert_allclose(after_kernel[..., DEAD, :], kernel[..., DEAD, :] / factor, rtol=1e-5)
    live = [c for c in range(4) if c != DEAD]
    np.testing.assert_array_equal(after_kernel[..., live, :], kernel[..., live, :])
    # The float model computes the same products: equal to float32 rounding.
    np.testing.assert_allclose(_numpy(model(x)), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(rk.compact(model).model(x)), before, rtol=1e-5, atol=1e-5)
    assert lift_dead_constants(model, x) == 0  # already in the middle of the range


@pytest.mark.parametrize("case", [
    {"activation": "swish"},  # not the identity at the lifted value: the constant would not scale
    {"reader": "conv"},  # the lifted row would round to nothing in the convolution's per-channel scales
    {"reader": "shared"},  # the depthwise convolution is called twice
    {"branch": "add"},  # an Add reads the constant too: it would see the lifted value
    {"branch": "conv"},  # a regular convolution reads it too
    {"branch": "output"},  # the model outputs it too
    {"branch": "nested"},  # the depthwise convolution is shared with a nested model
    {"norm_axis": 1},  # the BatchNormalization's `beta` is per image row, not per unit
    {"constant": 3.0},  # already past half the top: no rounding to fear
    {"constant": -1.0},  # ReLU6 makes it 0: exact in int8, and `compact` removes it
])
def test_other_paths_are_left_as_they_are(case):
    model, x = _block(**case)
    weights = [_numpy(w) for w in model.weights]
    assert lift_dead_constants(model, x) == 0
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(_numpy(after), before)


def test_a_model_without_a_graph_or_dead_units_is_left_alone():
    model, x = _block()
    kernel = _numpy(model.get_layer("expand").kernel)
    kernel[..., DEAD] = 0.5
    model.get_layer("expand").kernel.assign(kernel)
    assert lift_dead_constants(model, x) == 0

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = _block()[0]

        def call(self, inputs):
            return self.block(inputs)

    assert lift_dead_constants(Subclassed(), x) == 0


def test_lifted_puts_every_weight_back_even_on_an_error():
    model, x = _block()
    weights = [_numpy(w) for w in model.weights]
    with pytest.raises(RuntimeError, match="inside"):
        with dead_constants.lifted(model, x) as count:
            assert count == 1
            assert _numpy(model.get_layer("expand_bn").beta)[DEAD] > 1.0  # lifted inside
            raise RuntimeError("inside")
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(_numpy(after), before)


@converts
def test_full_int8_export_lifts_the_constant_in_the_file_only(tmp_path, monkeypatch):
    """The cause of the full-int8 loss after a unit shrink, on one channel:
    the constant rounded in its tensor's per-tensor range, the error scaled
    up by the depthwise BatchNormalization with the border pattern. `export`
    converts the lifted model and puts the weights back."""
    model, x = _block()
    weights = [_numpy(w) for w in model.weights]

    def channel_error(name):
        path = str(tmp_path / f"{name}.tflite")
        rk.export(model, path, int8=True, representative_data=x[:128], check=x[128:], min_agreement=0.0)
        ours, theirs = rk.deploy.Runtime(path)(x[128:])[..., DEAD], _numpy(model(x[128:]))[..., DEAD]
        return np.sqrt(np.mean((ours - theirs) ** 2)) / np.std(theirs)

    # Measured: 0.37 without the lift, 0.09 with it; the live channels 0.02.
    # What is left is the depthwise weights' own rounding, scaled up the same way.
    after = channel_error("lifted")
    for before_value, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(_numpy(variable), before_value)
    monkeypatch.setattr(dead_constants, "lifted", lambda model, x: contextlib.nullcontext(0))
    before = channel_error("not_lifted")
    assert before > 0.3 and after < 0.15, (before, after)
