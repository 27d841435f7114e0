"""The layer registry (`keras_regkit.layers`): a layer of your own,
registered once, takes part in every feature, `compact` included."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import units as units_lib

L = keras.layers


@keras.saving.register_keras_serializable(package="test_layers")
class Affine(keras.layers.Layer):
    """A user's layer: `activation(x @ w + b)`, its weights not named
    `kernel` and `bias`, so only its registration makes them known."""

    def __init__(self, units, activation=None, use_bias=True, w_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.use_bias = units, use_bias
        self.activation = keras.activations.get(activation)
        self.w_regularizer = keras.regularizers.get(w_regularizer)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), regularizer=self.w_regularizer, name="w")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", name="b") if self.use_bias else None

    def call(self, x):
        y = keras.ops.matmul(x, self.w)
        return self.activation(y if self.b is None else y + self.b)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
                "w_regularizer": keras.regularizers.serialize(self.w_regularizer)}


AFFINE = rk.layers.LayerKind(
    weights={"kernel": ("w", "w_regularizer")},
    unit_kernel="w",
    compact=rk.layers.Units("units", kernel="w", bias="b"),
)


@pytest.fixture
def registered():
    rk.layers.register(Affine, AFFINE)
    yield
    rk.layers.unregister(Affine)


def affine_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = Affine(16, activation="relu", name="a1")(inputs)
    h = Affine(12, activation="tanh", name="a2")(h)
    return keras.Model(inputs, L.Dense(3, name="out")(h))


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 3))).astype("float32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_a_registered_layer_is_penalised_monitored_pruned_shrunk_and_compacted(registered, tmp_path):
    model = affine_model()
    x, y = data()
    assert [ref.path for ref in rk.iter_weights(model)] == ["a1", "a2", "out"]
    # Penalised: the loss moves by exactly the penalty on the declared weight.
    model.compile("sgd", "mse")
    plain = model.evaluate(x, y, verbose=0)
    rk.apply_regularizers(model, {"a1": rk.regularizers.L1(0.01)})
    w1 = numpy(model.get_layer("a1").w)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + 0.01 * np.abs(w1).sum(), rel=1e-5)
    # Monitored: the sparsity monitor logs it.
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[rk.callbacks.SparsityMonitor()])
    assert "sparsity/a1" in history.history
    # Pruned by whole units: its units are the slices of `w`, and the output
    # layer stays whole.
    rk.prune(model, sparsity=0.25, granularity="unit", layers="a*")
    dead = rk.dead_units(model)
    assert dead["a1"][1] == 16 and dead["a2"][1] == 12 and dead["out"] == (0, 3)
    assert dead["a1"][0] + dead["a2"][0] == round(0.25 * 28)
    # Shrunk by whole units.
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    rk.shrink(model, x, y, sparsity=0.5, granularity="unit", epochs=2, batch_size=16, layers="a*")
    dead = rk.dead_units(model)
    assert dead["a1"][0] + dead["a2"][0] == 14

    result = rk.compact(model)

    assert result.units == {"a1": (16, 16 - dead["a1"][0]), "a2": (12, 12 - dead["a2"][0]), "out": (3, 3)}
    assert result.skipped == {}
    np.testing.assert_allclose(numpy(result.model(x)), numpy(model(x)), rtol=1e-5, atol=1e-5)
    # Saved, and reloaded where keras_regkit is not there: only Keras' and
    # the user's own (registered) classes are in the config.
    config = json.dumps(result.model.get_config())
    assert "keras_regkit" not in config
    result.model.save(tmp_path / "compact.keras")
    np.save(tmp_path / "x.npy", x)
    code = "import sys\nsys.modules['keras_regkit'] = None\nimport keras, numpy as np\n"
    code += textwrap.dedent(inspect.getsource(Affine)) + textwrap.dedent("""
        model = keras.saving.load_model("compact.keras")
        np.save("y.npy", keras.ops.convert_to_numpy(model(np.load("x.npy"))))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_an_unregistered_layer_has_no_units_and_compact_leaves_it_as_it_is():
    model = affine_model()
    assert units_lib.unit_kernel(model.get_layer("a1")) is None
    result = rk.compact(model)
    assert "Affine is not a layer compact can reason about" in result.skipped["a1"]


def test_a_subclass_of_a_registered_layer_has_its_units_but_compact_skips_it(registered):
    class Scaled(Affine):  # may change `call`: compact cannot know
        def call(self, x):
            return 2.0 * super().call(x)

    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(2, name="out")(Scaled(4, name="s")(inputs)))
    assert units_lib.unit_kernel(model.get_layer("s")) is model.get_layer("s").w
    result = rk.compact(model, custom_objects={"Scaled": Scaled})
    assert result.skipped["s"] == "Scaled subclasses Affine, and may change its call"


def test_a_registered_layer_takes_an_n_m_pattern_on_its_inputs(registered):
    model = affine_model()
    rk.prune(model, granularity="2:4", layers="a2")  # its w reads 16 inputs: 4 groups of 4
    w = numpy(model.get_layer("a2").w)
    assert (np.count_nonzero(w.reshape(4, 4, 12), axis=1) <= 2).all()


def test_register_as_a_decorator_and_a_later_registration_replaces_an_earlier_one():
    @rk.layers.register(rk.layers.LayerKind(unit_kernel="w"))
    class Mine(Affine):
        pass

    try:
        assert rk.layers.kind_of(Mine(2)).unit_kernel == "w"
        rk.layers.register(Mine, rk.layers.LayerKind())
        assert rk.layers.kind_of(Mine(2)).unit_kernel is None
    finally:
        rk.layers.unregister(Mine)
    assert rk.layers.kind_of(Mine(2)) is rk.layers.kinds.DEFAULT


def registration(name, call, error, match):
    return pytest.param(call, error, match, id=name)


# Registrations refused at the call (no model is involved).
BAD_INPUT = [
    registration("class", lambda: rk.layers.register(int, AFFINE), TypeError,
                 r"argument `layer_class`.*Received: layer_class=<class 'int'>"),
    registration("kind", lambda: rk.layers.register(Affine, {"unit_kernel": "w"}), TypeError,
                 r"argument `kind`.*LayerKind"),
    registration("weights", lambda: rk.layers.LayerKind(weights={"weight": ("w", "r")}), TypeError,
                 r"argument `weights`.*weight kind"),
    registration("unit_axes", lambda: rk.layers.LayerKind(unit_axes=0), ValueError,
                 r"argument `unit_axes`.*unit_axes=0"),
    registration("compact", lambda: rk.layers.LayerKind(compact="units"), TypeError,
                 r"argument `compact`.*compact='units'"),
    # One variable under two kinds would be counted, penalised and pruned twice
    # (issue #37: 240 parameters reported for a model of 192); two variables
    # saving their regularizers to one attribute would reload with one penalty.
    registration("one-variable-two-kinds",
                 lambda: rk.layers.LayerKind(weights={"kernel": ("w", "w_regularizer"),
                                                      "bias": ("w", "b_regularizer")}),
                 TypeError, r"argument `weights` of LayerKind: the variable attribute 'w' is given to several weight "
                            r"kinds \['kernel', 'bias'\]"),
    registration("one-regularizer-two-kinds",
                 lambda: rk.layers.LayerKind(weights={"kernel": ("w", "regularizer"), "bias": ("b", "regularizer")}),
                 TypeError, r"the regularizer attribute 'regularizer' is given to several weight kinds"),
    registration("weights-pair-of-three", lambda: rk.layers.LayerKind(weights={"kernel": ("w", "r", "x")}), TypeError,
                 r"argument `weights`.*pair"),
    registration("weights-list-pair", lambda: rk.layers.LayerKind(weights={"kernel": ["w", "r"]}), TypeError,
                 r"argument `weights`.*pair"),
    registration("weights-not-a-dict", lambda: rk.layers.LayerKind(weights=[("kernel", ("w", "r"))]), TypeError,
                 r"argument `weights`.*dict"),
    registration("unit_kernel-variable", lambda: rk.layers.LayerKind(unit_kernel=keras.Variable(1.0)), TypeError,
                 r"argument `unit_kernel`"),
    registration("unit_axes-float", lambda: rk.layers.LayerKind(unit_axes=1.5), ValueError, r"unit_axes=1.5"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUT)
def test_a_bad_registration_is_refused_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


class Twice(Affine):
    """Declares its `w` by `regkit_weights`, as two kinds."""

    def regkit_weights(self):
        return {"kernel": ("w", "w_regularizer"), "bias": ("w", "w_regularizer")}


def test_a_declaration_giving_one_variable_two_kinds_is_refused_naming_the_layer_and_the_variable():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(16, name="out")(Twice(8, name="twice")(inputs)))
    with pytest.raises(TypeError, match=r"Layer 'twice' \(Twice\).*'w' is given to several weight kinds"):
        rk.sparsity_report(model, "all")
    with pytest.raises(TypeError, match=r"Layer 'twice'"):
        rk.apply_regularizers(model, {"*": rk.regularizers.L1(0.1)}, weights="all")
    assert all(getattr(v, "regularizer", None) is None for v in model.weights)
