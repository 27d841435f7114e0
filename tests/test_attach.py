import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L1, L2

from conftest import (
    assert_refused_and_unchanged,
    model_under_test,
    right_checks,
    row,
    run_with_fixtures,
    tiny_data,
    tiny_mlp,
    unbuilt,
)


def nested_model():
    encoder = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="enc_dense"), keras.layers.Dense(4, name="enc_out")],
        name="encoder",
    )
    inputs = keras.Input((6,))
    x = encoder(inputs)
    x = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, x, name="outer")


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = keras.Sequential([keras.layers.Dense(4, name="inner")], name="block")
        self.out = keras.layers.Dense(2, name="out")

    def call(self, x):
        return self.out(self.block(x))


def paths(attachment):
    return sorted(f"{ref.path}:{ref.kind}" for ref in attachment.refs)


def test_name_glob_matches_names_and_paths_in_nested_models():
    model = nested_model()
    assert paths(rk.apply_regularizers(model, {"encoder/*": L1(0.1)})) == [
        "encoder/enc_dense:kernel", "encoder/enc_out:kernel"]
    assert paths(rk.apply_regularizers(model, {"enc_out": L1(0.1)})) == ["encoder/enc_out:kernel"]
    # A container selects what it contains.
    assert len(rk.apply_regularizers(model, {"encoder": L1(0.1)})) == 2


def test_class_and_callable_selectors():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert paths(rk.apply_regularizers(model, {keras.layers.Conv2D: L1(0.1)})) == ["conv2d:kernel"]
    assert paths(rk.apply_regularizers(model, {lambda layer: layer.name.startswith("den"): L1(0.1)})) == ["dense:kernel"]


def test_reaches_layers_of_subclassed_models():
    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    assert paths(rk.apply_regularizers(model, {"*": L2(0.1)})) == ["block/inner:kernel", "out:kernel"]
    assert len(model.losses) == 2


def test_kernels_by_default_other_kinds_only_when_asked():
    model = keras.Sequential([
        keras.Input((5,), dtype="int32"),
        keras.layers.Embedding(10, 4),
        keras.layers.LSTM(3, return_sequences=True),
        keras.layers.SeparableConv1D(2, 3),
        keras.layers.DepthwiseConv1D(2),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(2),
    ])
    assert paths(rk.apply_regularizers(model, {"*": L1(0.1)})) == ["dense:kernel", "lstm/lstm_cell:kernel"]
    for kind, expected in [
        ("recurrent_kernel", ["lstm/lstm_cell:recurrent_kernel"]),
        ("embeddings", ["embedding:embeddings"]),
        ("depthwise_kernel", ["depthwise_conv1d:depthwise_kernel", "separable_conv1d:depthwise_kernel"]),
        ("pointwise_kernel", ["separable_conv1d:pointwise_kernel"]),
        ("bias", ["dense:bias", "depthwise_conv1d:bias", "lstm/lstm_cell:bias", "separable_conv1d:bias"]),
    ]:
        assert paths(rk.apply_regularizers(model, {"*": L2(0.1)}, weights=kind)) == expected
    # The LSTM's config (what `save` writes) carries the penalties too.
    config = model.get_layer("lstm").get_config()
    assert config["kernel_regularizer"]["class_name"] == "L1"
    assert config["recurrent_regularizer"]["class_name"] == "L2"
    assert model.get_layer("depthwise_conv1d").get_config()["depthwise_regularizer"]["class_name"] == "L2"


def test_selector_that_matches_nothing_lists_available_layers():
    model = nested_model()
    with pytest.raises(ValueError, match=r"'decoder/\*' matched no layer.*\['encoder/enc_dense', 'encoder/enc_out', 'head'\]"):
        rk.apply_regularizers(model, {"decoder/*": L1(0.1)})


def test_bad_arguments_are_rejected_before_anything_changes():
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"argument `weights`.*Received: weights='kernal'"):
        rk.apply_regularizers(model, {"*": L1(0.1)}, weights="kernal")
    with pytest.raises(TypeError, match="Regularizer` instance"):
        rk.apply_regularizers(model, {"hidden0": L1(0.1), "out": lambda w: 0.0})
    with pytest.raises(TypeError, match="layer selector"):
        rk.apply_regularizers(model, {3: L1(0.1)})
    with pytest.raises(TypeError, match="expected a dict"):
        rk.apply_regularizers(model, L1(0.1))
    assert model.losses == []


def _one_sgd_step(model, x, y):
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]


def test_penalty_attached_to_trained_model_acts_in_the_very_next_step():
    x, y = tiny_data()
    plain, regularized = tiny_mlp(), tiny_mlp()
    regularized.set_weights(plain.get_weights())
    for model in (plain, regularized):
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, shuffle=False)  # traces the train function
    before = [w.copy() for w in regularized.get_weights()]

    alpha, lr = 0.05, 0.1
    rk.apply_regularizers(regularized, {"out": L1(alpha)})
    plain_loss = plain.evaluate(x, y, verbose=0)
    reg_loss = regularized.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(reg_loss - plain_loss, alpha * np.abs(before[2]).sum(), rtol=1e-5)

    after_plain = _one_sgd_step(plain, x, y)
    after_reg = _one_sgd_step(regularized, x, y)
    # The penalised kernel moved by exactly lr * alpha * sign(w) more; the rest is unchanged.
    np.testing.assert_allclose(after_plain[2] - after_reg[2], lr * alpha * np.sign(before[2]), atol=1e-6)
    np.testing.assert_allclose(after_plain[0], after_reg[0], atol=1e-6)


def test_undo_and_remove_take_penalties_off_again():
    model = tiny_mlp(kernel_regularizer=L2(0.5))
    x, y = tiny_data()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    with_l2 = model.evaluate(x, y, verbose=0)
    attached = rk.apply_regularizers(model, {"*": L1(1.0)})
    assert model.evaluate(x, y, verbose=0) > with_l2 + 1
    attached.undo()
    assert model.evaluate(x, y, verbose=0) == pytest.approx(with_l2)
    assert all(isinstance(layer.kernel_regularizer, L2) for layer in model.layers)

    removed = rk.remove_regularizers(model)
    assert len(removed) == 2 and model.losses == []
    assert model.evaluate(x, y, verbose=0) < with_l2
    assert model.layers[0].get_config()["kernel_regularizer"] is None
    removed.undo()
    assert model.evaluate(x, y, verbose=0) == pytest.approx(with_l2)


def test_later_selector_wins_where_two_overlap():
    model = tiny_mlp()
    rk.apply_regularizers(model, {"*": L1(0.1), "out": L2(0.2)})
    assert isinstance(model.layers[0].kernel_regularizer, L1)
    assert isinstance(model.layers[1].kernel_regularizer, L2)


def test_refuses_weights_inside_composite_layers_whose_config_would_drop_them():
    inputs = keras.Input((4, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(outputs))
    # One of the four projections: MultiHeadAttention's config has one
    # `kernel_regularizer` for all four, so it could not save this.
    with pytest.raises(ValueError, match=r"inside the MultiHeadAttention layer 'mha'.*lost when the model is saved"):
        rk.apply_regularizers(model, {"mha/key": L1(0.1)})
    assert model.losses == []
    assert paths(rk.apply_regularizers(model, {"head": L1(0.1)})) == ["head:kernel"]
    # Reports still see inside it.
    assert any(ref.path.startswith("mha/") for ref in rk.iter_weights(model))


def test_penalty_on_a_frozen_layer_warns_that_it_acts_only_once_trainable():
    model = tiny_mlp()
    model.layers[0].trainable = False
    with pytest.warns(UserWarning, match=r"frozen.*\['hidden0:kernel'\]"):
        attached = rk.apply_regularizers(model, {"*": L1(0.1)})
    assert len(attached) == 2 and len(model.losses) == 1  # Keras counts the trainable one only
    model.layers[0].trainable = True
    assert len(model.losses) == 2


class UnregisteredPenalty(keras.regularizers.Regularizer):
    def __call__(self, x):
        return keras.ops.sum(keras.ops.abs(x))

    def get_config(self):
        return {}


def test_an_unregistered_regularizer_warns_that_the_file_needs_custom_objects(tmp_path):
    import warnings

    model = tiny_mlp()
    with pytest.warns(UserWarning, match=r"'out'.*UnregisteredPenalty.*custom_objects"):
        rk.apply_regularizers(model, {"out": UnregisteredPenalty()})
    model.save(tmp_path / "m.keras")
    # What the warning says: the file alone does not load, it does with custom_objects.
    with pytest.raises(TypeError, match="UnregisteredPenalty"):
        keras.saving.load_model(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras",
                                       custom_objects={"UnregisteredPenalty": UnregisteredPenalty})
    assert len(reloaded.losses) == 1
    # Ours and Keras' own load on their own: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rk.apply_regularizers(tiny_mlp(), {"out": L1(0.1), "hidden0": keras.regularizers.L2(0.1)})


def _edited(edit):
    """`to_json()` of an L1 on both kernels of `tiny_mlp()`, passed through
    `edit(record)`; the first entry stays valid, so a call that applied
    entries one by one would change the model before it failed."""
    import json

    record = json.loads(rk.apply_regularizers(tiny_mlp(), {"*": L1(0.1)}).to_json())
    edit(record)
    return json.dumps(record)


def _set(path, value):
    def edit(record):
        *keys, last = path
        target = record
        for key in keys:
            target = target[key]
        target[last] = value
    return edit


def _delete(path):
    def edit(record):
        *keys, last = path
        target = record
        for key in keys:
            target = target[key]
        del target[last]
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (_delete(("weights", 1, "path")), r"weights\[1\].*exactly the keys"),
    (_delete(("weights", 1, "kind")), r"weights\[1\].*exactly the keys"),
    (_delete(("weights", 1, "regularizer")), r"weights\[1\].*exactly the keys"),
    (_set(("weights", 1, "extra"), 1), r"weights\[1\].*exactly the keys"),
    (_set(("weights", 1), ["out", "kernel", 0]), r"weights\[1\].*exactly the keys"),
    (_set(("weights", 1, "regularizer"), 1), r"weights\[1\].*int in \[0, 0\]"),
    (_set(("weights", 1, "regularizer"), -1), r"weights\[1\].*int in \[0, 0\]"),
    (_set(("weights", 1, "regularizer"), "0"), r"weights\[1\].*int in \[0, 0\]"),
    (_set(("weights", 1, "regularizer"), 0.0), r"weights\[1\].*int in \[0, 0\]"),
    (_set(("weights", 1, "regularizer"), True), r"weights\[1\].*int in \[0, 0\]"),
    (_set(("weights", 1, "path"), 3), r"weights\[1\].*'path' and 'kind' as strings"),
    (_set(("weights", 1, "kind"), None), r"weights\[1\].*'path' and 'kind' as strings"),
    (_set(("weights", 1, "path"), "decoder/out"), r"weights\[1\].*has no weights decoder/out:kernel"),
    (_set(("weights", 1, "kind"), "kernal"), r"weights\[1\].*has no weights out:kernal"),
    (_set(("regularizers", 0), {"class_name": "NoSuchRegularizer", "config": {}}),
     r"regularizers\[0\] cannot be deserialized"),
    (_set(("regularizers", 0), keras.saving.serialize_keras_object(keras.layers.Dense(2))),
     r"regularizers\[0\] is a Dense"),
    (_set(("regularizers", 0, "config", "alpha"), -1.0), r"regularizers\[0\] cannot be deserialized.*alpha"),
    (_set(("weights",), {"path": "out"}), r"text of `Attachment.to_json\(\)`"),
    (_delete(("regularizers",)), r"text of `Attachment.to_json\(\)`"),
    (_set(("keras_regkit_attachment",), 2), r"text of `Attachment.to_json\(\)`"),
])
def test_reapply_refuses_an_edited_attachment_naming_the_entry_and_changes_nothing(edit, fragment):
    text = _edited(edit)
    model = tiny_mlp()
    previous = L2(0.01)
    model.get_layer("hidden0").kernel.regularizer = previous
    with pytest.raises(ValueError, match=r"argument `attachment_json`.*" + fragment):
        rk.reapply_regularizers(model, text)
    assert model.get_layer("hidden0").kernel.regularizer is previous
    assert model.get_layer("out").kernel.regularizer is None


def test_reapply_refuses_another_models_attachment_and_changes_nothing():
    text = rk.apply_regularizers(tiny_mlp(units=(8, 8, 4)), {"*": L1(0.1)}).to_json()
    model = tiny_mlp()
    with pytest.raises(ValueError, match=r"argument `attachment_json`: entry weights\[1\].*hidden1:kernel"):
        rk.reapply_regularizers(model, text)
    assert model.losses == []


def attention_with_own_penalty():
    inputs = keras.Input((3, 4))
    outputs = keras.layers.MultiHeadAttention(2, 2, name="mha", kernel_regularizer=L2(0.1))(inputs, inputs)
    return keras.Model(inputs, outputs)


def penalized(model):
    return sorted(ref.path for ref in rk.iter_weights(model, "kernel") if ref.regularizer is not None)


def test_removing_part_of_an_attention_layers_own_penalty_needs_allow_unsaved_and_changes_nothing():
    model = attention_with_own_penalty()
    mha = model.get_layer("mha")
    own = mha.get_config()["kernel_regularizer"]
    with pytest.raises(ValueError, match=r"layer 'mha'.*remove it from the whole layer.*allow_unsaved=True"
                                         r".*\['mha/key', 'mha/value', 'mha/attention_output'\]"):
        rk.remove_regularizers(model, "mha/query")
    assert len(penalized(model)) == 4 and mha.get_config()["kernel_regularizer"] == own


def test_a_penalty_removed_from_part_of_an_attention_layer_does_not_come_back_on_reload(tmp_path):
    model = attention_with_own_penalty()
    removed = rk.remove_regularizers(model, "mha/query", allow_unsaved=True)
    kept = ["mha/attention_output", "mha/key", "mha/value"]
    assert penalized(model) == kept and sorted(r.path for r in removed.unsaved) == kept
    with pytest.warns(UserWarning, match=r"will not carry the penalties of .*mha/key:kernel"):
        model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    # The attention layer's own argument was cleared: the removed penalty stays removed...
    assert penalized(reloaded) == []
    # ... and the kept ones, lost as the warning said, come back from the JSON.
    rk.reapply_regularizers(reloaded, removed.to_json())
    assert penalized(reloaded) == kept
    assert float(rk.attach.total_penalty(reloaded)) == pytest.approx(float(rk.attach.total_penalty(model)), rel=1e-6)
    removed.undo()
    assert len(penalized(model)) == 4 and model.get_layer("mha").get_config()["kernel_regularizer"] is not None


def test_removing_all_of_an_attention_layers_penalty_is_saved_without_a_warning(tmp_path):
    model = attention_with_own_penalty()
    rk.remove_regularizers(model, "mha")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.save(tmp_path / "m.keras")
    assert penalized(keras.saving.load_model(tmp_path / "m.keras")) == []


def test_another_penalty_on_part_of_an_attention_layer_is_not_overridden_by_its_own_argument_on_reload(tmp_path):
    model = attention_with_own_penalty()
    attached = rk.apply_regularizers(model, {"mha/query": L1(0.5)}, allow_unsaved=True)
    # All four now differ from what the layer's one argument could give: none is saved through it.
    assert len(attached.unsaved) == 4
    with pytest.warns(UserWarning, match="will not carry the penalties"):  # once: here, not at the save
        assert model.get_layer("mha").get_config()["kernel_regularizer"] is None
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert penalized(reloaded) == []  # not L2 on the query kernel
    rk.reapply_regularizers(reloaded, attached.to_json())
    kinds = {ref.path: type(ref.regularizer).__name__ for ref in rk.iter_weights(reloaded, "kernel")}
    assert kinds == {"mha/query": "L1", "mha/key": "L2", "mha/value": "L2", "mha/attention_output": "L2"}


# -- bad and unusual input: the tables' helpers are in conftest -----------------

BAD_INPUT = [
    # A model that is not built has no weights: say so, don't blame the selector.
    row("apply-unbuilt", lambda m: rk.apply_regularizers(unbuilt(), {"*": L1(0.1)}), ValueError, "build the model first"),
    row("remove-unbuilt", lambda m: rk.remove_regularizers(unbuilt()), ValueError, "build the model first"),
    row("reapply-unbuilt", lambda m: rk.reapply_regularizers(
        unbuilt(), rk.apply_regularizers(tiny_mlp(), {"*": L1(0.1)}).to_json()), ValueError, "build the model first"),
    # Callable selectors must answer True or False.
    row("selector-returns-array", lambda m: rk.apply_regularizers(m, {lambda layer: np.array([True, False]): L1(0.1)}),
     TypeError, "must return True or False"),
    row("selector-returns-none", lambda m: rk.remove_regularizers(m, layers=lambda layer: None),
     TypeError, "must return True or False"),
    row("selector-none-key", lambda m: rk.apply_regularizers(m, {None: L1(0.1)}), TypeError, "selector"),
    row("selector-not-callable", lambda m: rk.apply_regularizers(m, {3: L1(0.1)}), TypeError, "selector"),
    row("selector-matches-nothing", lambda m: rk.apply_regularizers(m, {"nomatch*": L1(0.1)}), ValueError, "hidden0"),
    # Weight kinds.
    row("apply-weights-int", lambda m: rk.apply_regularizers(m, {"*": L1(0.1)}, weights=5), ValueError, "weights"),
    # Not a model.
    row("apply-model-none", lambda m: rk.apply_regularizers(None, {"*": L1(0.1)}), TypeError, "model"),
    # apply_regularizers: all or nothing.
    row("apply-not-dict", lambda m: rk.apply_regularizers(m, L1(0.1)), TypeError, "regularizers"),
    row("apply-str-regularizer", lambda m: rk.apply_regularizers(m, {"*": "l1"}), TypeError, "'*'"),
    row("apply-second-entry-bad", lambda m: rk.apply_regularizers(m, {"out": L1(0.1), "hidden0": "l1"}),
     TypeError, "hidden0"),
    row("apply-allow_unsaved-str", lambda m: rk.apply_regularizers(m, {"*": L1(0.1)}, allow_unsaved="no"),
        TypeError, "allow_unsaved"),
    row("remove-allow_unsaved-str", lambda m: rk.remove_regularizers(m, allow_unsaved="yes"), TypeError,
        "allow_unsaved"),
    row("reapply-not-json", lambda m: rk.reapply_regularizers(m, "not json"), ValueError, "attachment_json"),
    row("reapply-other-model", lambda m: rk.reapply_regularizers(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="x")]),
        rk.apply_regularizers(tiny_mlp(), {"*": L1(0.1)}).to_json()), ValueError, "has no weights"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_selector_returning_numpy_bool_selects():
    model = model_under_test()
    attached = rk.apply_regularizers(model, {lambda layer: np.bool_(layer.name == "out"): L1(0.1)})
    assert [ref.path for ref in attached.refs] == ["out"]


def right_built_after_the_message_works():
    model = unbuilt()
    model(np.ones((1, 3), "float32"))  # what the message says to do
    assert [ref.path for ref in rk.apply_regularizers(model, {"d": L1(0.1)}).refs] == ["d"]
    assert rk.dead_units(model) == {"d": (0, 4), model.layers[1].name: (0, 2)}


def right_frozen_layer_penalty_warns():
    # Keras adds no penalty for a frozen layer: attaching one must say so.
    model = model_under_test()
    model.get_layer("out").trainable = False
    with pytest.warns(UserWarning, match="frozen"):
        attached = rk.apply_regularizers(model, {"out": L1(0.1)})
    assert [ref.path for ref in attached.refs] == ["out"]


RIGHT = right_checks(
    right_selector_returning_numpy_bool_selects,
    right_built_after_the_message_works,
    right_frozen_layer_penalty_warns,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
