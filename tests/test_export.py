"""Export to LiteRT and ONNX of models this package produced (`shrink`'s
zeros, `compact`'s smaller graph), each file loaded in the runtime a user
deploys with and its outputs compared with Keras'."""

import os

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit import deploy
from keras_regkit.deploy.calibration import calibration

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "export tests run under the TensorFlow backend: LiteRT's int8 and sparse storage are options of "
        "TensorFlow's converter, and Keras' ONNX export uses tf2onnx there (the [export] extra); under JAX "
        "it needs jax2onnx and under PyTorch LiteRT needs litert-torch, neither in the extra",
        allow_module_level=True)

# Skipped with the reason when the [export] extra is not installed.
litert = pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert: pip install '.[export]'")
onnxruntime = pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install '.[export]'")
pytest.importorskip("tf2onnx", reason="Keras' ONNX export needs tf2onnx: pip install '.[export]'")

FEATURES, CLASSES = 32, 4

# The float tolerance of the issue: LiteRT and ONNX Runtime run the same float32
# arithmetic in another order, so logits of order 10 differ by ~1e-6.
FLOAT_ATOL = 1e-4
# int8 files: every weight and activation rounded to 1/255 of its range
# moves logits by ~1e-2; on 400 inputs of well-separated classes that flips
# a few near-ties at most. 0.95 fails on a broken calibration (outputs of a
# wrong scale agree on ~1/CLASSES of inputs), not on rounding.
INT8_MIN_AGREEMENT = 0.95


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    # Classes from a fixed random projection: learnable, not trivial.
    projection = np.random.default_rng(123).normal(size=(FEATURES, CLASSES))
    return x, (x @ projection).argmax(1).astype("int32")


def _compiled(model):
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def data():
    return _data(800, 0), _data(400, 1)


@pytest.fixture(scope="module")
def shrunk(data):
    """An MLP `shrink` left with 90 % exact zeros (unstructured)."""
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    model = _compiled(keras.Sequential([
        keras.Input((FEATURES,)), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(CLASSES)]))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    rk.shrink(model, x, y, sparsity=0.9, epochs=3, batch_size=64)
    assert rk.sparsity_report(model).total.sparsity == pytest.approx(0.9, abs=0.01)
    return model


@pytest.fixture(scope="module")
def compacted(data):
    """A functional CNN shrunk unit by unit, then `compact`-ed: fewer filters
    and units, folded biases, a new graph."""
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Reshape((FEATURES, 1))(inputs)
    h = keras.layers.Conv1D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling1D(2)(h)
    h = keras.layers.Flatten()(keras.layers.Conv1D(32, 3, activation="relu")(h))
    h = keras.layers.Dense(128, activation="relu")(h)
    model = _compiled(keras.Model(inputs, keras.layers.Dense(CLASSES)(h)))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    rk.shrink(model, x, y, sparsity=0.5, epochs=3, batch_size=64, granularity="unit")
    result = rk.compact(model)
    assert result.model.count_params() < model.count_params() / 2
    return result.model


def _litert_outputs(path, x):
    """The LiteRT interpreter as a user calls it (no keras_regkit code)."""
    interpreter = litert.Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _onnx_outputs(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


RUNTIMES = {".tflite": _litert_outputs, ".onnx": _onnx_outputs}


@pytest.mark.parametrize("which", ["shrunk", "compacted"])
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_float_file_gives_the_keras_outputs_in_its_runtime(request, data, tmp_path, which, suffix):
    model = request.getfixturevalue(which)
    _, (x_test, _) = data
    path = tmp_path / f"model{suffix}"
    result = rk.export(model, path)
    assert result.file_bytes == os.path.getsize(path) > 0
    got = RUNTIMES[suffix](path, x_test)
    np.testing.assert_allclose(got, np.asarray(model(x_test)), atol=FLOAT_ATOL, rtol=0)


@pytest.mark.parametrize("which, int8", [("shrunk", True), ("compacted", True), ("compacted", "dynamic")])
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_int8_file_is_smaller_and_agrees_on_top1(request, data, tmp_path, which, int8, suffix):
    model = request.getfixturevalue(which)
    (x, _), (x_test, y_test) = data
    float_result = rk.export(model, tmp_path / f"float{suffix}")
    path = tmp_path / f"int8{suffix}"
    # Dynamic int8 needs no calibration inputs: none given.
    result = rk.export(model, path, int8=int8, representative_data=x if int8 is True else None)
    got = RUNTIMES[suffix](path, x_test)
    expected = np.asarray(model(x_test))
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    print(f"{which} {suffix} int8={int8}: top-1 agreement {agreement:.4f}, "
          f"{result.file_bytes} vs {float_result.file_bytes} bytes float")
    assert agreement >= INT8_MIN_AGREEMENT
    # Not a copy of the float file: the outputs moved, and each weight takes
    # 1 byte instead of 4 (>= 2 saved per weight leaves room for the scales).
    assert np.max(np.abs(got - expected)) > 1e-6
    assert float_result.file_bytes - result.file_bytes >= 2 * model.count_params()
    # The int8 file still classifies: its accuracy within a few points of Keras'.
    assert np.mean(got.argmax(1) == y_test) >= np.mean(expected.argmax(1) == y_test) - 0.05


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_sparse_storage_makes_a_90_percent_sparse_file_smaller_with_the_same_outputs(shrunk, data, tmp_path,
                                                                                    suffix):
    _, (x_test, _) = data
    dense = rk.export(shrunk, tmp_path / f"dense{suffix}")
    sparse = rk.export(shrunk, tmp_path / f"sparse{suffix}", sparse=True)
    print(f"{suffix}: {dense.file_bytes} bytes dense, {sparse.file_bytes} sparse")
    # 10 % of the weights left: LiteRT's block format and ONNX's COO (8-byte
    # indices) cost ~2-3x the values, so >= 2.5x smaller, not 10x.
    assert sparse.file_bytes * 2.5 < dense.file_bytes
    np.testing.assert_allclose(RUNTIMES[suffix](tmp_path / f"sparse{suffix}", x_test),
                               np.asarray(shrunk(x_test)), atol=FLOAT_ATOL, rtol=0)


def test_without_sparse_storage_the_zeros_take_as_much_room_as_weights(shrunk, tmp_path):
    """Why `sparse=` exists: a 90 % sparse model's file is as large as a dense
    one of the same shapes (if a converter starts compressing zeros by
    default, this fails and the docs must change)."""
    dense = keras.models.clone_model(shrunk)
    dense.set_weights([w + 0.5 for w in shrunk.get_weights()])
    for suffix in (".tflite", ".onnx"):
        zeros = rk.export(shrunk, tmp_path / f"zeros{suffix}").file_bytes
        full = rk.export(dense, tmp_path / f"full{suffix}").file_bytes
        assert zeros > 0.95 * full, suffix


def test_check_reports_the_runtime_figures(compacted, data, tmp_path):
    (x, _), (x_test, _) = data
    # float64, NumPy's default: cast for the converter's float32 input.
    result = rk.export(compacted, tmp_path / "m.tflite", int8=True, representative_data=x.astype("float64"),
                       check=x_test)
    assert result.format == "litert" and result.int8
    assert INT8_MIN_AGREEMENT <= result.top1_agreement <= 1.0
    logits = np.asarray(compacted(x_test))
    assert 0 < result.max_abs_diff < 0.2 * np.max(np.abs(logits))
    assert 0 < result.latency_ms < 1000
    assert "top-1 agreement" in str(result)


def test_check_raises_when_the_runtime_disagrees(shrunk, data, tmp_path, monkeypatch):
    _, (x_test, _) = data
    real_call = deploy.Runtime.__call__
    monkeypatch.setattr(deploy.Runtime, "__call__", lambda self, x: real_call(self, x) + 1e-2)
    with pytest.raises(deploy.ExportCheckError, match="differ from Keras' by up to 0.01"):
        rk.export(shrunk, tmp_path / "m.onnx", check=x_test)
    assert (tmp_path / "m.onnx").exists()  # left for inspection, as the message says
    # Outputs in the wrong order: the top-1 classes no longer match.
    monkeypatch.setattr(deploy.Runtime, "__call__", lambda self, x: real_call(self, x)[::-1])
    with pytest.raises(deploy.ExportCheckError, match="top-1 class on .* below min_agreement=0.95"):
        rk.export(shrunk, tmp_path / "m8.onnx", int8=True, check=x_test)


def test_held_zeros_and_penalties_export_and_run(data, tmp_path):
    """A model still carrying keras_regkit's constraints (`HoldZeros`) and
    penalties: neither is part of the inference graph, both files run."""
    (x, y), (x_test, _) = data
    model = _compiled(keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"),
                                        keras.layers.Dense(CLASSES)]))
    rk.apply_regularizers(model, {"*": rk.regularizers.ExpAbs(1e-4)})
    rk.prune(model, sparsity=0.5, hold=True)
    model.fit(x, y, epochs=1, verbose=0)
    assert any(isinstance(w.constraint, rk.pruning.HoldZeros) for w in model.weights)
    for suffix in (".tflite", ".onnx"):
        result = rk.export(model, tmp_path / f"held{suffix}", check=x_test)
        assert result.max_abs_diff <= FLOAT_ATOL


def test_runtime_feeds_named_inputs(data, tmp_path):
    """A two-input functional model: the runtime is fed by input name."""
    _, (x_test, _) = data
    a, b = keras.Input((FEATURES,), name="a"), keras.Input((3,), name="b")
    merged = keras.layers.Concatenate()([keras.layers.Dense(8)(a), b])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(merged))
    inputs = {"a": x_test, "b": x_test[:, :3]}
    expected = np.asarray(model(inputs))
    for suffix in (".tflite", ".onnx"):
        rk.export(model, tmp_path / f"two{suffix}")
        runtime = deploy.Runtime(tmp_path / f"two{suffix}")
        assert sorted(runtime.input_names) == ["a", "b"]
        np.testing.assert_allclose(runtime(inputs), expected, atol=FLOAT_ATOL, rtol=0)
        with pytest.raises(ValueError, match=r"Inputs \['b'\] are missing"):
            runtime({"a": x_test})


# ---------------------------------------------------------------- refusals
def test_refuses_a_model_quantized_by_keras_because_litert_cannot_convert_it(shrunk, data, tmp_path):
    _, (x_test, _) = data
    quantized = keras.models.clone_model(shrunk)
    quantized.set_weights(shrunk.get_weights())
    quantized.quantize("int8")
    quantized(x_test[:1])
    # Keras' own export fails deep in the converter. If a Keras release fixes
    # that, this fails: then let such models through.
    with pytest.raises(Exception, match="fully_connected"):
        quantized.export(str(tmp_path / "keras.tflite"), format="litert", verbose=False)
    with pytest.raises(ValueError, match=r"already quantized \(int8.*pass the float model and `int8=True`"):
        rk.export(quantized, tmp_path / "ours.tflite")


def test_refuses_sparse_int8_litert_because_its_default_delegate_cannot_run_it(shrunk, data, tmp_path):
    import tensorflow as tf

    (x, _), _ = data
    with pytest.raises(ValueError, match="cannot be int8 and sparse"):
        rk.export(shrunk, tmp_path / "m.tflite", int8=True, sparse=True, representative_data=x)
    assert not (tmp_path / "m.tflite").exists()
    # The reason, with Keras' and the converter's own calls. If a LiteRT
    # release runs such files, this fails: then let them through.
    path = str(tmp_path / "keras.tflite")
    shrunk.export(path, format="litert", verbose=False, representative_dataset=calibration(x),
                  optimizations=[tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY])
    with pytest.raises(RuntimeError, match="failed to delegate"):
        litert.Interpreter(model_path=path).allocate_tensors()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"path": "model.h5"}, ValueError, r"ending in \.tflite or \.onnx.*path='model.h5'"),
    ({"path": 3}, TypeError, "expected a str or os.PathLike"),
    ({"int8": "yes"}, TypeError, "`int8`: expected True, False or \"dynamic\". Received: int8='yes'"),
    ({"sparse": None}, TypeError, "`sparse`: expected True or False"),
    ({"atol": -1.0}, ValueError, "`atol`"),
    ({"min_agreement": 1.5}, ValueError, "`min_agreement`"),
    ({"int8": True}, ValueError, "needs `representative_data=`"),
    ({"int8": True, "path": "m.onnx"}, ValueError, "needs `representative_data=`"),
    ({"check": [np.zeros((3, FEATURES)), np.zeros((4, FEATURES))]}, ValueError,
     r"`check`: its arrays must all have the same number of samples. Received sizes \[3, 4\]"),
])
def test_bad_arguments_are_refused_at_the_call(shrunk, tmp_path, kwargs, error, match):
    kwargs = {"path": tmp_path / "m.tflite", **kwargs}
    with pytest.raises(error, match=match):
        rk.export(shrunk, **kwargs)


def test_refuses_an_unbuilt_model(tmp_path):
    with pytest.raises(ValueError, match="not built yet"):
        rk.export(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "m.onnx")


# ---------------------------------------------------------------- command line
def test_cli_exports_checks_and_prints_the_figures(compacted, data, tmp_path, capsys):
    from keras_regkit import cli

    (x, _), (x_test, _) = data
    compacted.save(tmp_path / "small.keras")
    np.save(tmp_path / "x_test.npy", x_test)
    np.save(tmp_path / "x_train.npy", x[:200])
    out = tmp_path / "small.tflite"
    code = cli.main(["export", str(tmp_path / "small.keras"), str(out), "--int8",
                     "--check", str(tmp_path / "x_test.npy"), "--representative", str(tmp_path / "x_train.npy")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "litert (int8)" in printed and "top-1 agreement" in printed
    assert out.stat().st_size > 0
    assert cli.main(["export", str(tmp_path / "small.keras"), str(tmp_path / "d.onnx"), "--int8", "dynamic"]) == 0
    assert "onnx (int8 dynamic)" in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail, message", [
    (["model.h5"], "ending in .tflite or .onnx"),
    (["model.tflite", "--int8"], "needs `representative_data=`"),
])
def test_cli_bad_export_is_one_line_error(shrunk, tmp_path, capsys, argv_tail, message):
    from keras_regkit import cli

    shrunk.save(tmp_path / "m.keras")
    out, *flags = argv_tail
    assert cli.main(["export", str(tmp_path / "m.keras"), str(tmp_path / out), *flags]) == 1
    error = capsys.readouterr().err
    assert error.startswith("keras-regkit export: ") and message in error
    assert error.count("\n") == 1


def test_compacted_keras_hub_encoder_exports_and_runs_by_input_name(tmp_path):
    """KerasHub's `TransformerEncoder`, rebuilt by `compact` with a smaller
    `intermediate_dim`: both files run in their runtimes, fed by input name."""
    keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is in the test extra")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        dropout=0.0)
    model = keras.Model(backbone.input, keras.layers.Dense(3)(backbone.output["pooled_output"]))
    rk.prune(model, sparsity=0.5, granularity="unit", layers="*feedforward_intermediate_dense")
    small = rk.compact(model).model
    assert small.count_params() < model.count_params()
    rng = np.random.default_rng(0)
    tokens = {"token_ids": rng.integers(1, 50, size=(64, 8)).astype("int32"),
              "segment_ids": np.zeros((64, 8), "int32"), "padding_mask": np.ones((64, 8), "int32")}
    for suffix in (".tflite", ".onnx"):
        result = rk.export(small, tmp_path / f"bert{suffix}", check=tokens)
        assert result.max_abs_diff <= FLOAT_ATOL
        assert sorted(deploy.Runtime(result.path).input_names) == sorted(tokens)
