"""BatchNormalization statistics after a fine-tune, and full int8:
`refresh_batch_norm`, `stale_batch_norm`, and `export(int8=True)`'s
warning (the cause of #43's int8 loss after a unit shrink)."""

import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.deploy import refresh_batch_norm, stale_batch_norm
from keras_regkit.deploy.batch_norm import STALE_RMS
from tests.conftest import assert_refused_and_unchanged, model_state, row

TF = keras.backend.backend() == "tensorflow"


def _conv_bn(seed=0, channels=16):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(h))


def _images(n=256, seed=0):
    return np.random.default_rng(seed).normal(1.0, 2.0, size=(n, 8, 8, 3)).astype("float32")


def _bn_inputs(model, x):
    return keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("bn").input)(x)).reshape(-1, 16)


def _stale(model, x, channels=4):
    """The state a short fine-tune leaves: a few channels' moving variance
    far below their inputs' variance (their inference outputs 30x too
    large), and the head not reading them, so the float model is right and
    only the per-tensor int8 range of the ReLU output is stretched."""
    refresh_batch_norm(model, x)
    bn = model.get_layer("bn")
    variance = keras.ops.convert_to_numpy(bn.moving_variance).copy()
    variance[:channels] *= 1e-3
    bn.moving_variance.assign(variance)
    head = model.get_layer("head")
    kernel = keras.ops.convert_to_numpy(head.kernel).copy()
    kernel[:channels] = 0.0
    head.kernel.assign(kernel)


def test_refresh_sets_moving_statistics_to_the_data_and_changes_nothing_else():
    model, x = _conv_bn(), _images()
    bn = model.get_layer("bn")
    others = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights
              if v.path not in (bn.moving_mean.path, bn.moving_variance.path)}
    assert refresh_batch_norm(model, x, batch_size=64) == 1
    inputs = _bn_inputs(model, x)
    np.testing.assert_allclose(bn.moving_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)
    # The mean of the four batches' variances (each about its own mean).
    batches = inputs.reshape(4, -1, 16)
    np.testing.assert_allclose(bn.moving_variance, batches.var(1).mean(0), rtol=1e-4)
    for v in model.weights:
        if v.path in others:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), others[v.path], err_msg=v.path)
    assert bn.momentum == 0.99  # restored


def test_a_short_last_batch_counts_for_the_samples_it_holds():
    model, x = _conv_bn(), _images(300)  # batches of 256 and 44
    refresh_batch_norm(model, x, batch_size=256)
    bn, inputs = model.get_layer("bn"), _bn_inputs(model, x)
    np.testing.assert_allclose(bn.moving_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)
    per_image = inputs.reshape(300, -1, 16)
    variances = [per_image[:256].reshape(-1, 16).var(0), per_image[256:].reshape(-1, 16).var(0)]
    np.testing.assert_allclose(bn.moving_variance, (256 * variances[0] + 44 * variances[1]) / 300, rtol=1e-4)


def test_over_several_processes_every_process_keeps_the_statistics_of_all_samples(monkeypatch):
    # A second process (simulated) saw 100 samples whose statistics were all
    # 5.0: each process ends with the average weighted by samples.
    from keras_regkit import _processes

    model, x = _conv_bn(), _images(300)
    monkeypatch.setattr(_processes, "process_count", lambda: 2)
    monkeypatch.setattr(_processes, "global_sum", lambda values: np.asarray(values, "float64") + (
        100.0 if np.size(values) == 1 else 100.0 * 5.0))
    refresh_batch_norm(model, x, batch_size=300)
    bn, inputs = model.get_layer("bn"), _bn_inputs(model, x)
    np.testing.assert_allclose(bn.moving_mean, (300 * inputs.mean(0) + 500.0) / 400, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, (300 * inputs.var(0) + 500.0) / 400, rtol=1e-4, atol=1e-5)


def test_refresh_skips_frozen_layers_and_a_model_without_any():
    model, x = _conv_bn(), _images()
    model.get_layer("bn").trainable = False
    before = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean).copy()
    assert refresh_batch_norm(model, x) == 0
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean, before)
    assert refresh_batch_norm(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), np.ones((4, 3), "float32")) == 0


def test_stale_statistics_are_measured_and_refreshed_ones_are_not():
    model, x = _conv_bn(), _images()
    refresh_batch_norm(model, x)
    assert stale_batch_norm(model, x) == {}
    _stale(model, x)
    assert stale_batch_norm(model, x)["bn"] > STALE_RMS


@pytest.mark.skipif(not TF, reason="full-int8 LiteRT files need the TensorFlow backend")
def test_stale_statistics_cost_full_int8_agreement_and_refresh_restores_it(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model, x = _conv_bn(), _images(512)
    _stale(model, x)
    stale_file, fresh_file = str(tmp_path / "stale.tflite"), str(tmp_path / "fresh.tflite")
    with pytest.warns(UserWarning, match=r"refresh_batch_norm\(model, x_train\)"):
        stale = rk.export(model, stale_file, int8=True, representative_data=x[:200], check=x[200:],
                          min_agreement=0.0)
    keras_before = np.asarray(model(x[200:]))
    refresh_batch_norm(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fresh = rk.export(model, fresh_file, int8=True, representative_data=x[:200], check=x[200:])
    assert stale.top1_agreement < 0.9 <= 0.97 <= fresh.top1_agreement, (stale, fresh)
    # The refresh changed the stale channels only, which the head does not read.
    np.testing.assert_allclose(np.asarray(model(x[200:])), keras_before, atol=1e-4)


@pytest.mark.skipif(not TF, reason="full-int8 LiteRT files need the TensorFlow backend")
def test_export_leaves_a_stale_model_unchanged(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model, x = _conv_bn(), _images()
    _stale(model, x)
    before = model_state(model)
    with pytest.warns(UserWarning, match="moving statistics do not describe"):
        rk.export(model, str(tmp_path / "m.tflite"), int8=True, representative_data=x)
    for (path, value, *_), (_, now, *_) in zip(before, model_state(model)):
        np.testing.assert_array_equal(value, now, err_msg=path)


BAD_INPUT = [
    row("refresh-batch-size-1", lambda m: refresh_batch_norm(m, np.ones((4, 6), "float32"), batch_size=1),
        ValueError, "batch_size"),
    row("refresh-wrong-width", lambda m: refresh_batch_norm(m, np.ones((4, 5), "float32")),
        ValueError, "`x`: expected an array of shape (None, 6)"),
    row("refresh-not-a-model", lambda m: refresh_batch_norm(m.layers[0], np.ones((4, 6), "float32")),
        TypeError, "expected a keras.Model"),
]


@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def test_a_failing_forward_pass_puts_the_statistics_back(monkeypatch):
    model, x = _conv_bn(), _images()
    bn = model.get_layer("bn")
    before = [keras.ops.convert_to_numpy(v).copy() for v in (bn.moving_mean, bn.moving_variance)]
    calls = []
    original = type(model).__call__

    def fail_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "__call__", fail_on_second)
    with pytest.raises(RuntimeError, match="out of memory"):
        refresh_batch_norm(model, x, batch_size=64)
    for value, variable in zip(before, (bn.moving_mean, bn.moving_variance)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    assert bn.momentum == 0.99

