"""Quantization-aware training and shrinking (`keras_regkit.quantization`):
the LiteRT converter's full int8 simulated in the forward pass, held zeros
kept, the checks of the shrink seeing the int8 model, and the exported file
giving what the simulation gave."""

import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.quantization import Int8Simulation, Int8Training, fake_quant_kernel
from keras_regkit.shrinking import ShrinkPhase, evaluation

from conftest import SubclassedModel, assert_refused_and_unchanged, compiled, converts, row, tiny_mlp, value_and_grad

L = keras.layers


def _cnn():
    """Conv+BN+ReLU, DepthwiseConv+BN+ReLU6, a residual Add, pooling, Dense:
    the converter's fusions and its in-place Add."""
    inputs = keras.Input((8, 8, 3))
    h = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="conv")(inputs)))
    branch = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(h)
    branch = L.ReLU(6.0, name="relu6")(L.BatchNormalization(name="bn_dw")(branch))
    branch = L.Conv2D(8, 1, name="project")(branch)
    h = L.GlobalAveragePooling2D(name="pool")(L.Add(name="add")([h, branch]))
    outputs = L.Dense(4, name="logits")(L.Dense(16, activation="relu", name="hidden")(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _images(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    return x, (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype("int32") + 2 * (x[:, 4:, 4:, 1].mean(axis=(1, 2)) > 0)


_TRAINED = {}


@pytest.fixture
def trained():
    """A fresh compiled CNN with the weights of one training (trained once per backend)."""
    x, y = _images()
    model = _cnn()
    if not _TRAINED:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
        _TRAINED["weights"] = model.get_weights()
    model.set_weights(_TRAINED["weights"])
    return model, x, y


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _kernels_with_zeros(model):
    return {v.path: _numpy(v) == 0 for v in model.weights if "kernel" in v.path}


# -- the weights -----------------------------------------------------------------
@pytest.mark.parametrize("shape, axes", [((5, 3), (0,)), ((3, 3, 2, 4), (0, 1, 2)), ((3, 3, 4, 1), (0, 1))],
                         ids=["dense", "conv", "depthwise"])
def test_kernels_round_per_channel_zeros_exactly_and_pass_gradients_straight_through(shape, axes):
    w = np.random.default_rng(0).normal(size=shape).astype("float32")
    w.reshape(-1)[::3] = 0.0  # for the dense kernel, a whole unit: a cut one
    scale = np.abs(w).max(axis=axes, keepdims=True) / 127
    scale = np.where(scale > 0, scale, 1.0)
    expected = np.clip(np.sign(w / scale) * np.floor(np.abs(w / scale) + 0.5), -127, 127) * scale
    got = _numpy(fake_quant_kernel(keras.ops.convert_to_tensor(w), axes))
    np.testing.assert_allclose(got, expected, atol=1e-7)
    steps = got / scale
    assert (got[w == 0] == 0).all() and np.allclose(steps, np.round(steps), atol=1e-4)  # int8 steps, zeros kept
    per_channel = np.abs(steps).max(axis=axes)
    assert set(np.round(per_channel).ravel()) <= {0.0, 127.0}  # each channel's own scale, not the tensor's
    _, grad = value_and_grad(lambda v: keras.ops.sum(fake_quant_kernel(v, axes) * 3.0), w)
    np.testing.assert_array_equal(grad, np.full(shape, 3.0, "float32"))


def test_the_roles_follow_the_converter_fusions(trained):
    model, x, _ = trained
    with Int8Simulation(model, x[:64]) as simulation:
        rounded = set(simulation.ranges())
    # conv and bn fold into relu; depthwise and bn_dw into relu6; the project conv is read by the add
    assert rounded == {"input:0", "relu", "relu6", "project", "add", "pool", "hidden", "logits"}
    # `project` is read in place by the add: the converter records both there
    assert simulation.ranges()["project"][1] == pytest.approx(simulation.ranges()["add"][1])


# -- the int8 file ---------------------------------------------------------------
@converts
@pytest.mark.parametrize("after_shrink", [False, True], ids=["trained", "int8-shrunk"])
def test_the_simulated_outputs_are_the_litert_full_int8_files_to_its_rounding(trained, tmp_path, after_shrink):
    from ai_edge_litert import interpreter as litert

    model, x, y = trained
    if after_shrink:
        rk.shrink(model, x, y, sparsity=0.5, granularity="unit", epochs=1, int8=True, representative_data=x[:200])
    path = tmp_path / "m.tflite"
    rk.export(model, path, int8=True, representative_data=x[:200])
    interpreter = litert.Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], (56, 8, 8, 3))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x[200:])
    interpreter.invoke()
    in_file = interpreter.get_tensor(out["index"])
    in_float = _numpy(model(x[200:]))
    with Int8Simulation(model, x[:200]) as simulation:
        simulated = _numpy(model(x[200:]))
    low, high = simulation.ranges()["logits"]
    step = (high - low) / 255  # the output's int8 step
    # The file's kernels requantize in fixed point: the same int8 value, or a step or two apart.
    apart = np.abs(simulated - in_file) / step
    float_apart = np.abs(in_float - in_file) / step
    print(f"steps apart: max {apart.max():.3f}, same {np.mean(apart < 0.01):.2f}; float: {np.mean(float_apart < 0.01):.2f}")
    assert apart.max() <= 3.01 and np.mean(apart < 0.01) >= 0.5
    assert np.mean(float_apart < 0.01) < 0.2  # the float model is not the file's


# -- training through the rounding -----------------------------------------------
def test_the_train_step_computes_the_int8_model_and_its_gradients_reach_the_kernels():
    model = tiny_mlp(units=(16, 4))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    float_loss = model.evaluate(X6, Y4, batch_size=64, verbose=0)
    with Int8Simulation(model, X6):
        int8_loss = model.evaluate(X6, Y4, batch_size=64, verbose=0)
    assert int8_loss != pytest.approx(float_loss, rel=1e-4)
    int8 = Int8Training(X6)
    with int8:  # a step at learning rate 0: its loss is the model's before the step
        history = model.fit(X6, Y4, batch_size=64, epochs=1, verbose=0, callbacks=[int8])
    assert history.history["loss"][0] == pytest.approx(int8_loss, rel=1e-5)
    assert model.evaluate(X6, Y4, batch_size=64, verbose=0) == pytest.approx(float_loss, rel=1e-6)  # removed
    before = [_numpy(v) for v in model.trainable_weights]
    model.optimizer.learning_rate.assign(0.1)
    with int8:
        model.fit(X6, Y4, batch_size=64, epochs=2, verbose=0, callbacks=[int8])
    assert all(not np.allclose(a, _numpy(v)) for a, v in zip(before, model.trainable_weights))  # straight through


def test_a_quantization_aware_fine_tune_keeps_a_pruned_models_zeros(trained):
    model, x, y = trained
    rk.prune(model, sparsity=0.6)
    zeros = _kernels_with_zeros(model)
    int8 = Int8Training(x[:200])
    with int8:
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[int8])
    for variable in model.weights:
        if variable.path in zeros:
            assert (_numpy(variable)[zeros[variable.path]] == 0).all(), variable.path
            assert not (_numpy(variable)[~zeros[variable.path]] == 0).any(), variable.path
            assert variable.constraint is None  # released
    assert not any("call" in vars(layer) for layer in [model, *model.layers])


def test_zeros_stay_exact_through_a_quantization_aware_shrink_and_the_model_is_plain_after(trained, tmp_path):
    model, x, y = trained
    result = rk.shrink(model, x, y, sparsity=0.5, epochs=1, int8=True, validation_data=(x[:64], y[:64]))
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    assert not any("call" in vars(layer) for layer in [model, *model.layers])
    assert all(v.constraint is None for v in model.weights)
    path = tmp_path / "m.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(_numpy(reloaded(x[:16])), _numpy(model(x[:16])))
    zeros = _kernels_with_zeros(model)
    assert sum(mask.sum() for mask in zeros.values()) > 0
    with Int8Simulation(model, x[:200]):
        model.fit(x[:64], y[:64], epochs=1, verbose=0)  # no hold here: only to show the simulation keeps zeros at 0
        quantized = {v.path: _numpy(fake_quant_kernel(v.value, tuple(range(len(v.shape) - 1))))
                     for v in model.weights if v.path.endswith("conv/kernel")}
    for path, value in quantized.items():
        assert (value[_numpy(next(v for v in model.weights if v.path == path)) == 0] == 0).all()


def test_a_quantization_aware_shrink_ends_with_the_float_models_statistics(trained):
    model, x, y = trained
    rk.shrink(model, x, y, sparsity=0.5, epochs=1, int8=True, cut_every=4)
    # One batch of all 256 samples: the statistics of the float network
    # (the one the converter folds), not of the simulated int8 one.
    for name in ("bn", "bn_dw"):
        bn = model.get_layer(name)
        seen = _numpy(keras.Model(model.input, bn.input)(x, training=False)).reshape(-1, bn.moving_mean.shape[0])
        np.testing.assert_allclose(_numpy(bn.moving_mean), seen.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(_numpy(bn.moving_variance), seen.var(0), rtol=1e-4, atol=1e-6)


@converts
def test_a_quantization_aware_shrink_exports_to_onnx_int8_and_agrees_in_onnx_runtime(trained, tmp_path):
    model, x, y = trained
    rk.shrink(model, x, y, sparsity=0.5, epochs=1, int8=True, representative_data=x[:200], cut_every=4)
    result = rk.export(model, tmp_path / "m.onnx", int8=True, representative_data=x[:200], check=x)
    assert result.top1_agreement >= 0.95  # QDQ static quantization, calibrated as the simulation was
    import onnx

    operators = {node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators  # the file is int8, not the float model


def test_the_tolerance_checks_see_the_int8_model(trained, monkeypatch):
    model, x, y = trained
    seen = []
    verdict = rk.shrinking.ValidationCheck.verdict

    def spying(check, checked):
        predicted = evaluation.predict(checked, x[:64])[0]  # what the check predicts from
        twin = keras.models.clone_model(checked)
        twin.set_weights(checked.get_weights())
        with Int8Simulation(twin, x[:200]):
            simulated = _numpy(twin(x[:64], training=False))
        seen.append((predicted, simulated, _numpy(twin(x[:64], training=False))))
        return verdict(check, checked)

    monkeypatch.setattr(rk.shrinking.ValidationCheck, "verdict", spying)
    rk.shrink(model, x, y, tolerance=0.5, epochs=1, int8=True, validation_data=(x[:64], y[:64]), cut_every=4)
    assert seen
    for predicted, simulated, in_float in seen:
        np.testing.assert_allclose(predicted, simulated, rtol=0, atol=1e-6)
        assert np.abs(predicted - in_float).max() > 1e-5  # the int8 rounding shows


# -- bad input -------------------------------------------------------------------
X6 = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
Y4 = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")


class _Batches(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return X6[index * 32:(index + 1) * 32], Y4[index * 32:(index + 1) * 32]


def _shrink(model, **kwargs):
    return rk.shrink(model, kwargs.pop("x", X6), Y4, sparsity=0.5, epochs=1, **kwargs)


BAD_INPUT = [
    row("shrink-int8-dynamic", lambda m: _shrink(m, int8="dynamic"), ValueError, "Received: int8='dynamic'",
        prepare=compiled),
    row("shrink-int8-dataset-without-data", lambda m: _shrink(m, x=_Batches(), int8=True), ValueError,
        "`int8=True` needs `representative_data=`", prepare=compiled),
    row("shrink-representative-without-int8", lambda m: _shrink(m, representative_data=X6), ValueError,
        "give `int8=True` with it", prepare=compiled),
    row("shrink-representative-wrong-width", lambda m: _shrink(m, int8=True, representative_data=X6[:, :5]),
        ValueError, "representative_data", prepare=compiled),
    row("shrink-representative-nan", lambda m: _shrink(m, int8=True, representative_data=np.full((4, 6), np.nan)),
        ValueError, "representative_data", prepare=compiled),
    row("shrink-representative-a-path", lambda m: _shrink(m, int8=True, representative_data="x.npy"),
        TypeError, "representative_data", prepare=compiled),
    row("phase-int8-without-data", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, int8=True), ValueError,
        "`int8=True` needs `representative_data=`"),
    row("simulation-subclassed", lambda m: Int8Simulation(_called_subclassed(), np.ones((2, 3), "float32")),
        ValueError, "Functional or Sequential model"),
    row("simulation-no-data", lambda m: Int8Simulation(m, None), ValueError, "needs `representative_data=`"),
    row("simulation-not-a-model", lambda m: Int8Simulation(m.layers[0], X6), TypeError, "`model`"),
    row("training-no-data", lambda m: Int8Training(None), ValueError, "Received: representative_data=None"),
    row("training-hold-zeros-not-bool", lambda m: Int8Training(X6, hold_zeros="yes"), TypeError,
        "hold_zeros='yes'"),
    row("training-wrong-data-at-fit", lambda m: m.fit(X6, Y4, epochs=1, verbose=0, callbacks=[
        Int8Training(X6[:, :5])]), ValueError, "representative_data", prepare=compiled),
    # Backends that run inference only: nothing to train the rounding with.
    row("training-on-openvino", lambda m: _on_backend("openvino", lambda: Int8Training(X6)), ValueError,
        "the 'openvino' Keras backend cannot train"),
    row("shrink-int8-on-numpy", lambda m: _on_backend("numpy", lambda: _shrink(m, int8=True)), ValueError,
        "Received: backend 'numpy'", prepare=compiled),
]


def _on_backend(name, call):
    """`call()` while `keras.backend.backend()` answers `name`."""
    original = keras.backend.backend
    keras.backend.backend = lambda: name
    try:
        return call()
    finally:
        keras.backend.backend = original


def _called_subclassed():
    model = SubclassedModel()
    model(np.ones((2, 3), "float32"))
    return model


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def test_layers_the_simulation_leaves_float_are_named_in_a_warning():
    inputs = keras.Input((6,))
    outputs = L.Dense(4, name="out")(L.LayerNormalization(name="norm")(L.Dense(8, name="d")(inputs)))
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning, match=r"leaves these layers float.*norm \(LayerNormalization\)"):
        with Int8Simulation(model, X6) as simulation:
            pass
    assert "norm" not in {name for name in simulation.ranges()} and "out" in simulation.ranges()


def test_representative_data_that_does_not_cover_the_training_inputs_is_warned_about():
    model = compiled(tiny_mlp())
    with pytest.warns(UserWarning, match=r"covers \[.*of input 0.*lie outside it"):
        _shrink(model, int8=True, representative_data=X6[:4] * 0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _shrink(compiled(tiny_mlp()), int8=True)  # x's own samples cover x
    assert not [w for w in caught if "representative_data" in str(w.message)]
