"""The fence's hold on Keras' saving (`keras_regkit._keras.serialization`):
a `get_config` set on a layer instance answers when Keras writes the
model's config, and comes off again. If an upgrade moves this, the tests
fail with a message that names the Keras version it was written for."""

import keras
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import serialization as fence

from conftest import fenced

WRITTEN = f"written for keras {WRITTEN_FOR['keras']}"


call = fenced


def nested_model():
    inner = keras.layers.MultiHeadAttention(2, 4, name="attention")
    x = keras.Input((3, 4))
    return keras.Model(x, inner(x, x)), inner


@pytest.mark.parametrize("write", [
    lambda model: model.get_config(),
    lambda model: keras.saving.serialize_keras_object(model),
    lambda model: keras.models.clone_model(model),
], ids=["get_config", "serialize_keras_object", "clone_model"])
def test_keras_asks_the_instance_for_its_config_of_the_model_and_of_a_layer_inside_it(write):
    model, inner = nested_model()
    calls = []
    call(fence.wrap_get_config, model, lambda: calls.append("model"))
    call(fence.wrap_get_config, inner, lambda: calls.append("attention"))
    write(model)
    if "model" not in calls and "attention" not in calls:
        pytest.fail(f"{WRITTEN}: Keras no longer asks a layer instance for its own `get_config` when it "
                    "writes a model's config, so keras_regkit cannot warn of penalties a saved model loses")
    assert "attention" in calls


def test_the_config_is_the_classs_own_and_saving_still_writes_and_reloads(tmp_path):
    model, inner = nested_model()
    before = inner.get_config()
    call(fence.wrap_get_config, inner, lambda: None)
    assert inner.get_config() == before
    path = tmp_path / "m.keras"
    model.save(path)
    assert keras.saving.load_model(path).get_layer("attention").get_config() == before


def test_unwrap_puts_back_the_wrapper_before_then_the_classs_own():
    model, inner = nested_model()
    calls = []
    call(fence.wrap_get_config, inner, lambda: calls.append(1))
    call(fence.wrap_get_config, inner, lambda: calls.append(2))
    inner.get_config()
    assert calls == [2, 1]
    call(fence.unwrap_get_config, inner)
    inner.get_config()
    assert calls == [2, 1, 1]
    call(fence.unwrap_get_config, inner)
    assert "get_config" not in vars(inner)
    inner.get_config()
    assert calls == [2, 1, 1]
    call(fence.unwrap_get_config, inner)  # nothing left to take off: no change


def test_the_wrapper_is_no_tracked_state_of_the_layer():
    model, inner = nested_model()
    weights = len(model.weights)
    call(fence.wrap_get_config, inner, lambda: None)
    assert len(model.weights) == weights and len(model.layers) == 2


def test_a_moved_hold_names_keras_and_the_version_it_was_written_for():
    class Locked:  # a layer Keras would no longer let us set an attribute on
        __slots__ = ()

        def get_config(self):
            return {}

    with pytest.raises(FenceError, match=rf"get_config.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.wrap_get_config(Locked(), lambda: None)
