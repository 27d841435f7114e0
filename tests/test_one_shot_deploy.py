"""After one-shot reconstruction (`prune_reconstructed`): the pruned model
goes on like any pruned model, to the shrink's fine-tune with its zeros
held, to `compact`, and to export (LiteRT and ONNX), a 2:4 model with its
pattern in the file."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning.granularity import NM

from conftest import converts, to_numpy

FEATURES, CLASSES = 16, 4


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    projection = np.random.default_rng(123).normal(size=(FEATURES, CLASSES))
    return x, (x @ projection).argmax(1).astype("int32")


@pytest.fixture(scope="module")
def data():
    return _data(512, 0), _data(128, 1)


@pytest.fixture(scope="module")
def trained_weights(data):
    (x, y), _ = data
    keras.utils.set_random_seed(0)
    model = _model()
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    return model.get_weights()


def _model():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu", name="h0"),
                              keras.layers.Dense(16, activation="relu", name="h1"),
                              keras.layers.Dense(CLASSES, name="out")])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _reconstructed(trained_weights, data, **kwargs):
    (x, _), _ = data
    model = _model()
    model.set_weights(trained_weights)
    rk.pruning.prune_reconstructed(model, calibration_data=x[:256], **kwargs)
    return model


def _kernels(model):
    return [to_numpy(ref.variable) for ref in rk.iter_weights(model)]


def test_hold_then_fit_keeps_the_reconstructions_zeros_and_trains(trained_weights, data):
    (x, y), _ = data
    model = _reconstructed(trained_weights, data, sparsity=0.5, hold=True)
    before = _kernels(model)
    loss = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    assert model.evaluate(x, y, verbose=0) != pytest.approx(loss, rel=1e-3)
    for old, new in zip(before, _kernels(model)):
        np.testing.assert_array_equal(new == 0, old == 0)
        assert not np.array_equal(new[old != 0], old[old != 0])  # the kept weights trained


def test_the_shrink_fine_tunes_a_reconstructed_model_with_its_zeros(trained_weights, data):
    (x, y), validation = data
    # hold=True: the shrink trains before its first cut, which would move the zeros away unheld.
    model = _reconstructed(trained_weights, data, sparsity=0.5, hold=True)
    before = _kernels(model)
    loss = model.evaluate(x, y, verbose=0)
    result = rk.shrink(model, x, y, sparsity=0.5, validation_data=validation, epochs=2, batch_size=64)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    # The reconstruction's zeros are the ones the shrink holds (its cut takes what is already zero first).
    for old, new in zip(before, _kernels(model)):
        np.testing.assert_array_equal(new == 0, old == 0)
    assert model.evaluate(x, y, verbose=0) != pytest.approx(loss, rel=1e-3)


def test_compact_takes_a_reconstructed_model(trained_weights, data):
    _, (x_test, _) = data
    model = _reconstructed(trained_weights, data, sparsity={"h1": 0.5, "out": 0.5})
    # A unit of h0 whose kernel is all zeros (dead): compact removes it, the reconstruction keeps the outputs.
    kernel = to_numpy(model.get_layer("h0").kernel)
    kernel[:, :4] = 0.0
    model.get_layer("h0").kernel.assign(kernel)
    result = rk.compact(model)
    assert result.model.get_layer("h0").units == 28
    np.testing.assert_allclose(to_numpy(result.model(x_test)), to_numpy(model(x_test)), atol=1e-5)


@converts
@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_a_reconstructed_model_exports_and_runs_with_keras_outputs(trained_weights, data, tmp_path, suffix):
    _, (x_test, _) = data
    model = _reconstructed(trained_weights, data, sparsity=0.7, hold=True)
    result = rk.export(model, tmp_path / f"m{suffix}", check=x_test)  # run in the runtime, compared with Keras
    assert result.max_abs_diff <= 1e-4


def _file_matrices(path):
    """The 2-D constant tensors of an exported file, as its runtime reads them."""
    if str(path).endswith(".tflite"):
        from ai_edge_litert import interpreter as litert

        interpreter = litert.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        matrices = []
        for detail in interpreter.get_tensor_details():
            try:
                value = interpreter.get_tensor(detail["index"])
            except ValueError:  # an intermediate tensor: no data
                continue
            if value.ndim == 2:
                matrices.append(value)
        return matrices
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 2]


@converts
@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_a_2_4_model_exports_with_its_pattern(trained_weights, data, tmp_path, suffix):
    _, (x_test, _) = data
    model = _reconstructed(trained_weights, data, granularity="2:4")
    rk.export(model, tmp_path / f"m{suffix}", check=x_test)
    matrices = _file_matrices(tmp_path / f"m{suffix}")
    for ref in rk.iter_weights(model):
        kernel = to_numpy(ref.variable)  # (inputs, units)
        # LiteRT's fully connected weights are (units, inputs), ONNX's MatMul's (inputs, units).
        found = [m if m.shape == kernel.shape else m.T for m in matrices
                 if m.shape in (kernel.shape, kernel.T.shape) and np.allclose(m if m.shape == kernel.shape else m.T,
                                                                              kernel)]
        assert found, f"{ref.name}'s kernel is not in the file"
        assert NM(2, 4).satisfied_by(found[0], 0)
        np.testing.assert_array_equal(found[0] == 0, kernel == 0)
        assert (kernel == 0).mean() == 0.5
