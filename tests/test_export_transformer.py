"""Export of a transformer (a plain-Keras encoder block: multi-head
attention, layer norms, a GELU feed-forward): an ONNX file that holds each
weight once and runs ONNX Runtime's fused transformer ops, int8 files in
both runtimes, and the rule by which `int8="auto"` picks the int8 mode."""

import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.deploy import fastest_int8

from conftest import converts, tiny_mlp

SEQ, WIDTH, CLASSES = 8, 16, 3


def approximate_gelu(x):
    return keras.activations.gelu(x, approximate=True)


def encoder_classifier():
    """One post-norm encoder block on a sequence of vectors, mean-pooled to
    class logits, with trained-looking (not initial) layer norm weights."""
    keras.utils.set_random_seed(0)
    # Sequences of any length, as KerasHub's backbones take them (the kernels'
    # duplicates came with the dynamic shapes).
    inputs = keras.Input((None, WIDTH), name="x")
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="attention")(inputs, inputs)
    hidden = keras.layers.LayerNormalization(epsilon=1e-5, name="attention_norm")(inputs + attended)
    # Approximate GELU, as KerasHub's: tf2onnx has no ONNX form of the exact one's Erfc.
    inner = keras.layers.Dense(32, activation=approximate_gelu, name="intermediate")(hidden)
    hidden = keras.layers.LayerNormalization(name="output_norm")(hidden + keras.layers.Dense(WIDTH)(inner))
    outputs = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model(inputs, outputs, name="encoder")
    rng = np.random.default_rng(1)
    for layer in (model.get_layer("attention_norm"), model.get_layer("output_norm")):
        layer.gamma.assign(rng.uniform(0.5, 1.5, WIDTH).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.3, WIDTH).astype("float32"))
    return model


@pytest.fixture(scope="module")
def model():
    return encoder_classifier()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).normal(size=(64, SEQ, WIDTH)).astype("float32")


@pytest.fixture(scope="module")
def onnx_file(model, x, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "encoder.onnx"
    return path, rk.export(model, path, check=x)


def _graph(path):
    import onnx

    return onnx.load(str(path)).graph


@converts
def test_onnx_file_stores_each_weight_once(model, onnx_file):
    """tf2onnx folded an unsqueezed copy of each attention kernel (read only
    for its shape) into a second initializer: the float file held more weight
    bytes than the model has parameters."""
    from onnx import numpy_helper

    path, _ = onnx_file
    arrays = [numpy_helper.to_array(i) for i in _graph(path).initializer]
    float_bytes = sum(a.nbytes for a in arrays if a.dtype == np.float32)
    parameter_bytes = 4 * model.count_params()
    assert float_bytes <= parameter_bytes, (float_bytes, parameter_bytes)
    # Nothing lost either: the weights are all there (biases may fold into other constants).
    assert float_bytes >= 0.9 * parameter_bytes


@converts
def test_onnx_file_runs_onnx_runtime_fused_ops_and_equals_keras(model, x, onnx_file):
    """The layer norms are one op each (the residual additions fused into
    them by ONNX Runtime's optimizer), and the file still gives Keras'
    outputs in ONNX Runtime."""
    path, result = onnx_file
    ops = [node.op_type for node in _graph(path).node]
    assert "GlobalAveragePool" not in ops[:-1] or ops.count("GlobalAveragePool") <= 1  # the pooling layer's only
    assert ops.count("LayerNormalization") + ops.count("SkipLayerNormalization") == 2, sorted(set(ops))
    got = rk.deploy.Runtime(path)(x)
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    assert result.max_abs_diff <= 1e-4 * max(1.0, np.abs(expected).max())


@converts
@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
@pytest.mark.parametrize("int8", [True, "dynamic"])
def test_int8_transformer_files_run_in_their_runtime(model, x, tmp_path, suffix, int8):
    """Full int8 ONNX of a transformer failed in ONNX Runtime before the layer
    norms were fused ("QLinearGlobalAveragePool parameter out of computation
    range"); every int8 file now runs and mostly picks Keras' class (an
    untrained model on random inputs: many near-ties)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int8=True on a transformer warns (the next test)
        result = rk.export(model, tmp_path / f"m{suffix}", int8=int8, representative_data=x if int8 is True else None,
                           check=x, min_agreement=0.8)
    assert result.int8 == int8 and result.top1_agreement >= 0.8


def test_int8_mode_rule_picks_dynamic_for_a_transformer_in_litert_and_full_int8_otherwise():
    model = encoder_classifier()
    assert fastest_int8(model) == fastest_int8(model, "litert") == "dynamic"
    assert fastest_int8(model, "onnx") is True  # ONNX Runtime's full int8 measured faster
    assert fastest_int8(tiny_mlp(units=(8,)), "litert") is fastest_int8(tiny_mlp(units=(8,)), "onnx") is True
    with pytest.raises(ValueError, match=r"`format`: expected one of \['litert', 'onnx'\]. Received: format='tflite'"):
        fastest_int8(model, "tflite")


@converts
def test_auto_writes_the_picked_mode_and_full_int8_on_a_transformer_warns(model, x, tmp_path):
    result = rk.export(model, tmp_path / "auto.tflite", int8="auto", check=x)
    assert result.int8 == "dynamic"
    with pytest.warns(UserWarning, match='has attention layers: full int8.*Pass int8="dynamic"'):
        rk.export(model, tmp_path / "full.tflite", int8=True, representative_data=x)


@converts
def test_refuses_an_onnx_file_onnx_runtime_cannot_load(x, tmp_path):
    """Exact GELU reached the file as TensorFlow's `Erfc`, which ONNX does not
    define: ONNX Runtime failed to load it ("No Op registered for Erfc")."""
    inputs = keras.Input((SEQ, WIDTH))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="gelu")(inputs), name="exact_gelu")
    (tmp_path / "m.onnx").write_bytes(b"the user's file")
    with pytest.raises(ValueError, match=r"'exact_gelu' cannot be written to ONNX.*Erfc \(in .*approximate=True"):
        rk.export(model, tmp_path / "m.onnx", check=x)
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's file"
    assert rk.export(model, tmp_path / "m.tflite", check=x).max_abs_diff < 1e-4  # LiteRT has it
