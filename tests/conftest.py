import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_regkit as rk  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "clear_session_per_module: a quick test on tiny models (the bad-input tables); Keras' session is cleared "
        "once after its module instead of after the test, since `clear_session` is a full garbage collection",
    )


_session_left_uncleared = {"module": False}


@pytest.fixture(autouse=True)
def _fresh_keras_state(request):
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
    if request.node.get_closest_marker("clear_session_per_module") is None:
        keras.backend.clear_session()
    else:
        _session_left_uncleared["module"] = True


@pytest.fixture(autouse=True, scope="module")
def _clear_session_after_module():
    yield
    if _session_left_uncleared["module"]:
        keras.backend.clear_session()
        _session_left_uncleared["module"] = False


def value_and_grad(fn, w, eager=False):
    """`fn(w)` and its gradient with respect to `w`, as NumPy arrays, with
    the current backend's own autodiff. Under TensorFlow inside a
    `tf.function`, as in `model.fit`'s train step (where our penalties run
    their fused kernels), unless `eager`."""
    w = keras.ops.convert_to_tensor(w)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        w = tf.Variable(w)

        def value_and_gradient():
            with tf.GradientTape() as tape:
                value = fn(w)
            return value, tape.gradient(value, w)

        if not eager:
            value_and_gradient = tf.function(value_and_gradient, autograph=False)
        value, grad = value_and_gradient()
    elif backend == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(w)
    elif backend == "torch":
        import torch

        w = w.detach().clone().requires_grad_(True)
        value = fn(w)
        (grad,) = torch.autograd.grad(value, w)
        value = value.detach()
    else:
        raise NotImplementedError(f"value_and_grad: no autodiff for backend {backend!r}")
    # float32 for NumPy: it can't hold bfloat16 tensors directly.
    return (
        keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(grad, "float32")),
    )


def assert_round_trip(obj):
    """`from_config(get_config())` gives an object of the same class with the
    same config; Keras' own tests check serializable classes this way."""
    config = obj.get_config()
    restored = type(obj).from_config(config)
    assert type(restored) is type(obj)
    assert restored.get_config() == config
    # And through Keras' registry, as `load_model` does.
    serialized = keras.saving.serialize_keras_object(obj)
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(obj)
    assert again.get_config() == config
    return restored


def missing(*modules) -> bool:
    """Whether any of these modules cannot be imported (an optional extra
    not installed)."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return True
    return False


# Tests that write and run LiteRT/ONNX files. The refusals (bad-input tables,
# the CLI's one-line errors) come before any conversion and run everywhere.
converts = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow" or missing("ai_edge_litert", "onnxruntime", "tf2onnx", "onnx"),
    reason="writing files runs under the TensorFlow backend with the [export] extra: LiteRT's int8 and sparse "
           "storage are options of TensorFlow's converter, and Keras' ONNX export uses tf2onnx there; under JAX "
           "it needs jax2onnx and under PyTorch LiteRT needs litert-torch, neither in the extra "
           "(pip install '.[export]')")


def tiny_mlp(units=(8, 4), inputs=6, name=None, **dense_kwargs):
    layers = [keras.Input((inputs,))]
    layers += [
        keras.layers.Dense(u, activation="relu", name=f"hidden{i}", **dense_kwargs)
        for i, u in enumerate(units[:-1])
    ]
    layers += [keras.layers.Dense(units[-1], name="out", **dense_kwargs)]
    return keras.Sequential(layers, name=name)


def tiny_data(n=32, inputs=6, outputs=4, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, inputs)).astype("float32"),
        rng.normal(size=(n, outputs)).astype("float32"),
    )


# -- bad and unusual input (issue #15) -----------------------------------------
# Each module's test file has a `BAD_INPUT` table of `row(...)`s, checked by
# `assert_refused_and_unchanged`, and a `RIGHT` table of `right_checks(...)`:
# inputs that once gave a wrong result with no error, each asserting the right one.


def row(name, call, error, fragment, prepare=None):
    """A `BAD_INPUT` entry: `call(model)` must raise `error` with `fragment`
    in its message; `prepare(model)` sets up the state the call receives."""
    return pytest.param(call, error, fragment, prepare, id=name)


def model_under_test():
    """A built model with a penalty on one kernel and zeros held (a
    `HoldZeros` constraint) on another, so that a call that changed any of
    them shows."""
    model = tiny_mlp(units=(8, 4))
    rk.apply_regularizers(model, {"hidden0": rk.regularizers.L2(0.01)})
    rk.prune(model, sparsity=0.5, layers="out", hold=True)
    return model


def model_state(model):
    """Everything a refused call must leave as it was."""
    return [
        (
            v.path,
            keras.ops.convert_to_numpy(v.value).copy(),
            getattr(v, "regularizer", None),
            getattr(v, "constraint", None),
        )
        for v in model.weights
    ] + [(layer.name, getattr(layer, "kernel_regularizer", None)) for layer in model.layers]


def assert_model_unchanged(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        if len(a) == 2:
            assert a[0] == b[0] and a[1] is b[1], f"{a[0]}: kernel_regularizer changed"
            continue
        path, value, regularizer, constraint = a
        assert path == b[0]
        np.testing.assert_array_equal(value, b[1], err_msg=f"{path} changed")
        assert regularizer is b[2], f"{path}: regularizer changed"
        assert constraint is b[3], f"{path}: constraint changed"


def assert_refused_and_unchanged(call, error, fragment, prepare):
    """The check of one `row`: the call raises, names the argument, and
    leaves a fresh `model_under_test()` as it was."""
    model = model_under_test()
    if prepare is not None:
        prepare(model)
    before = model_state(model)
    with pytest.raises(error) as raised:
        call(model)
    assert fragment in str(raised.value), str(raised.value)
    assert_model_unchanged(before, model_state(model))


def right_checks(*checks):
    """A `RIGHT` table: functions named `right_<what they show>`, which take
    pytest fixtures by their argument names."""
    return [pytest.param(check, id=check.__name__[len("right_"):]) for check in checks]


def run_with_fixtures(check, request):
    check(**{name: request.getfixturevalue(name) for name in inspect.signature(check).parameters})


def to_numpy(variable):
    return keras.ops.convert_to_numpy(variable).copy()


def kill(layer, units, biases=None):
    """Makes `units` of `layer` dead (every kernel weight feeding them 0),
    with the given biases, so that their constants are not simply 0."""
    attr = "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else "kernel"
    kernel = to_numpy(getattr(layer, attr))
    kernel[..., units] = 0.0
    getattr(layer, attr).assign(kernel)
    if biases is not None:
        bias = to_numpy(layer.bias)
        bias[units] = biases
        layer.bias.assign(bias)


def unbuilt():
    return keras.Sequential([keras.layers.Dense(4, name="d"), keras.layers.Dense(2)])


class SubclassedModel(keras.Model):
    """No known input shape: unbuilt until called."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def compiled(model):
    model.compile("sgd", "mse")
    return model


def infinite_dataset():
    import tensorflow as tf

    x, y = tiny_data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def nan_inf_kernel_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, name="d")])
    model.get_layer("d").kernel.assign(np.array([[np.nan, np.inf], [1.0, 2.0]], "float32"))
    return model


SERIALIZABLE_SCHEDULE = keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.0)


# -- interrupted fits, for the resume tests of the scheduler and the shrink -------
# Each interruption is an exception raised from a callback, as Keras' own
# BackupAndRestore tests do.


class Interrupt(keras.callbacks.Callback):
    """Raises at a chosen point of a chosen epoch (mid-epoch by default)."""

    def __init__(self, epoch, where="batch"):
        super().__init__()
        self.epoch, self.where, self.current = epoch, where, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.where == "batch" and self.current == self.epoch and batch == 1:
            raise RuntimeError(f"interrupted in epoch {self.epoch}")

    def on_epoch_end(self, epoch, logs=None):
        if self.where == "epoch_end" and epoch == self.epoch:
            raise RuntimeError(f"interrupted at the end of epoch {epoch}")

    def on_train_end(self, logs=None):
        if self.where == "train_end":
            raise RuntimeError("interrupted while finishing")


def resumed(run, interruptions):
    """`run(extra_callbacks)` interrupted at each of `interruptions` (a list of
    Interrupt), then run to the end; returns the last run's output."""
    for interrupt in interruptions:
        with pytest.raises(RuntimeError, match="interrupted"):
            run([interrupt])
    return run([])


def fenced(read, *args, library="keras", **kwargs):
    """`read(*args, **kwargs)`: a private read of `library` behind the fence
    (`keras_regkit._keras`). A read that an upgrade moved fails the test with
    the fence's message, which names the version it was written for."""
    from keras_regkit._keras import WRITTEN_FOR, FenceError

    try:
        return read(*args, **kwargs)
    except FenceError as error:
        pytest.fail(f"written for {library} {WRITTEN_FOR[library]}: {error}")
