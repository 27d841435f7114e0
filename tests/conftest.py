import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


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
