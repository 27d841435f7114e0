"""The one walk over a model's weights (`keras_regkit.weights`), and how a
layer of your own joins it."""

import keras
import numpy as np
import pytest

import keras_regkit as rk

from conftest import assert_refused_and_unchanged, row, unbuilt


@keras.saving.register_keras_serializable(package="test_weights")
class Scale(keras.layers.Layer):
    """A user's layer: an elementwise scale whose weight is not named
    `kernel`, so only its declaration makes it visible."""

    def __init__(self, w_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.w_regularizer = keras.regularizers.get(w_regularizer)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", regularizer=self.w_regularizer)

    def call(self, x):
        return x * self.w

    def regkit_weights(self):
        return {"kernel": ("w", "w_regularizer")}

    def get_config(self):
        return {**super().get_config(), "w_regularizer": keras.regularizers.serialize(self.w_regularizer)}


def scale_model():
    return keras.Sequential([keras.Input((4,)), Scale(name="scale"), keras.layers.Dense(2, name="out")])


def test_a_declared_weight_is_walked_penalised_reported_and_pruned(tmp_path):
    model = scale_model()
    assert [ref.path for ref in rk.iter_weights(model)] == ["scale", "out"]
    # Penalised: the loss moves by exactly the penalty on the declared weight.
    model.compile("sgd", "mse")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    plain = model.evaluate(x, y, verbose=0)
    rk.apply_regularizers(model, {"scale": rk.regularizers.L1(0.5)})
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + 0.5 * 4)
    # Saved with the layer's own config, and reloaded with it.
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.get_layer("scale").w_regularizer, rk.regularizers.L1)
    # Reported and pruned like any kernel.
    model.get_layer("scale").w.assign([0.0, 0.1, 2.0, 3.0])
    assert rk.sparsity_report(model).layers[0].zeros == 1
    rk.prune(model, threshold=0.5, layers="scale")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("scale").w), [0, 0, 2, 3])


def test_a_bad_declaration_is_refused_naming_the_layer():
    class Wrong(Scale):
        def regkit_weights(self):
            return {"kernel": ("missing", "w_regularizer")}

    model = keras.Sequential([keras.Input((4,)), Wrong(name="wrong")])
    with pytest.raises(TypeError, match="'wrong'.*'missing'"):
        list(rk.iter_weights(model))

    class NotAKind(Scale):
        def regkit_weights(self):
            return {"weight": ("w", "w_regularizer")}

    model = keras.Sequential([keras.Input((4,)), NotAKind(name="odd")])
    with pytest.raises(TypeError, match="'odd'.*weight kind"):
        list(rk.iter_weights(model))


def test_the_kind_table_is_read_only():
    with pytest.raises(TypeError):
        rk.weights.WEIGHT_KINDS["w"] = (("w", "w_regularizer"),)


# -- bad and unusual input: the tables' helpers are in conftest -----------------

BAD_INPUT = [
    # A model that is not built has no weights: say so, don't blame the selector.
    row("iter_weights-unbuilt", lambda m: list(rk.iter_weights(unbuilt())), ValueError, "build the model first"),
    # Weight kinds.
    row("iter-weights-typo", lambda m: list(rk.iter_weights(m, "kernels")), ValueError, "weights"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
