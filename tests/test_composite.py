"""Penalties inside composite layers: Keras' `MultiHeadAttention` (whose own
`kernel_regularizer` argument carries them, so they are saved) and KerasHub's
`TransformerEncoder` (which rebuilds its sublayers from its own arguments, so
they act in this process only, and say so)."""

import json
import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L1, L2

keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is in the test extra; its transformers are the case here")


def attention_model():
    inputs = keras.Input((4, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(outputs))


def bert():
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        dropout=0.0)


def bert_inputs(n=4):
    rng = np.random.default_rng(0)
    return {"token_ids": rng.integers(1, 50, size=(n, 8)), "segment_ids": np.zeros((n, 8), "int32"),
            "padding_mask": np.ones((n, 8), "int32")}


def l1_sum(variables, strength):
    return strength * sum(float(np.abs(keras.ops.convert_to_numpy(v)).sum()) for v in variables)


def total(model):
    return float(keras.ops.convert_to_numpy(rk.attach.total_penalty(model)))


def test_attention_penalty_goes_through_its_own_argument_and_is_saved(tmp_path):
    model = attention_model()
    attached = rk.apply_regularizers(model, {"*": L1(0.1)})
    mha = model.get_layer("mha")
    assert attached.unsaved == [] and isinstance(mha.get_config()["kernel_regularizer"], dict)
    inner = [ref.variable for ref in attached.refs if ref.path.startswith("mha/")]
    assert len(inner) == 4  # query, key, value, output projections
    assert total(model) == pytest.approx(l1_sum([ref.variable for ref in attached.refs], 0.1), rel=1e-5)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert total(reloaded) == pytest.approx(total(model), rel=1e-6)
    attached.undo()
    assert model.losses == [] and mha.get_config()["kernel_regularizer"] is None


def test_part_of_an_attention_layer_needs_allow_unsaved_and_names_it():
    model = attention_model()
    with pytest.raises(ValueError, match=r"allow_unsaved=True.*\['mha/query'\]"):
        rk.apply_regularizers(model, {"mha/query": L1(0.1)})
    assert model.losses == [] and model.get_layer("mha").get_config()["kernel_regularizer"] is None
    attached = rk.apply_regularizers(model, {"mha/query": L1(0.1)}, allow_unsaved=True)
    assert [ref.path for ref in attached.unsaved] == ["mha/query"] and len(model.losses) == 1
    with pytest.warns(UserWarning, match=r"will not carry the penalties of \['mha/query:kernel'\]"):
        assert model.get_layer("mha").get_config()["kernel_regularizer"] is None  # not all four


def test_keras_hub_encoder_penalties_act_warn_on_save_and_reapply_from_json(tmp_path):
    backbone = bert()
    with pytest.raises(ValueError, match="TransformerEncoder.*allow_unsaved=True"):
        rk.apply_regularizers(backbone, {"*": L1(1e-3)})
    assert backbone.losses == []
    attached = rk.apply_regularizers(backbone, {"transformer_layer_*": L1(1e-3)}, allow_unsaved=True)
    # Per encoder: 4 attention projections and the 2 feed-forward kernels.
    assert len(attached.unsaved) == 12 and len(backbone.losses) == 12
    assert total(backbone) == pytest.approx(l1_sum([r.variable for r in attached.refs], 1e-3), rel=1e-5)
    with pytest.warns(UserWarning, match="will not carry the penalties.*feedforward_intermediate_dense") as caught:
        backbone.save(tmp_path / "bert.keras")
        backbone.get_config()  # once only
    assert len([w for w in caught if "will not carry" in str(w.message)]) == 1
    reloaded = keras.saving.load_model(tmp_path / "bert.keras")
    assert reloaded.losses == []
    text = attached.to_json()
    assert len(json.loads(text)["regularizers"]) == 1  # one shared regularizer stays one
    again = rk.reapply_regularizers(reloaded, text)
    assert len(again) == 12 and total(reloaded) == pytest.approx(total(backbone), rel=1e-6)
    attached.undo()
    assert backbone.losses == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        backbone.get_config()  # the hook is gone with the penalties


def test_keras_hub_scheduled_penalty_moves_and_changes_training():
    backbone = bert()
    outputs = keras.layers.Dense(2, name="head")(backbone.output["pooled_output"])
    model = keras.Model(backbone.input, outputs)
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = bert_inputs(8), np.array([0, 1] * 4)
    plain = model.evaluate(x, y, verbose=0)
    strength = keras.optimizers.schedules.PolynomialDecay(1e-3, 1, 1e-2)  # 1e-3, then 1e-2 from epoch 1
    rk.apply_regularizers(model, {"transformer_layer_0": L2(strength)}, allow_unsaved=True)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
                        callbacks=[rk.callbacks.RegularizationScheduler(update_freq="epoch")])
    inner = [v for v in model.trainable_weights if "transformer_layer_0" in v.path and len(v.shape) >= 2
             and v.regularizer is not None]
    squares = sum(float(np.square(keras.ops.convert_to_numpy(v)).sum()) for v in inner)
    # SGD(0): the weights stand still, so the loss moves by the penalty only.
    np.testing.assert_allclose(np.array(history.history["loss"]) - plain, [1e-3 * squares, 1e-2 * squares], rtol=1e-3)
    removed = rk.remove_regularizers(model, "transformer_layer_0")
    assert len(removed) == 6 and model.losses == []


def bert_classifier():
    backbone = bert()
    outputs = keras.layers.Dense(2, name="head")(backbone.output["pooled_output"])
    model = keras.Model(backbone.input, outputs)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def assert_same_outputs(a, b, x):
    for p, q in zip(keras.tree.flatten(a(x)), keras.tree.flatten(b(x))):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(p), keras.ops.convert_to_numpy(q), atol=1e-5)


def test_shrink_and_prune_make_held_zeros_inside_attention_and_feed_forward_kernels():
    model = bert_classifier()
    x, y = bert_inputs(32), np.arange(32) % 2
    # Compiled, never trained: the optimizer has no second moments to score by yet.
    result = rk.shrink(model, x, y, sparsity=0.8, epochs=2, batch_size=8, learning_rate=None, score="magnitude")
    inner = {ref.path: keras.ops.convert_to_numpy(ref.variable) for ref in rk.iter_weights(model)
             if ref.path.startswith("transformer_layer_")}
    assert result.sparsity == pytest.approx(0.8, abs=1e-3)
    assert all((value == 0).mean() > 0.3 for value in inner.values())  # attention and feed-forward alike
    # prune(hold=True) keeps them zero through further training.
    rk.prune(model, sparsity=0.9, hold=True)
    zeros = {ref.path: keras.ops.convert_to_numpy(ref.variable) == 0 for ref in rk.iter_weights(model)
             if ref.path.startswith("transformer_layer_")}
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for ref in rk.iter_weights(model):
        if ref.path in zeros:
            assert (keras.ops.convert_to_numpy(ref.variable)[zeros[ref.path]] == 0).all(), ref.path


def test_compact_rebuilds_keras_hub_encoders_with_fewer_feed_forward_units(tmp_path):
    model = bert_classifier()
    rng = np.random.default_rng(1)
    for layer in model._flatten_layers():
        if layer.name == "feedforward_intermediate_dense":  # constants to fold
            layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    rk.prune(model, sparsity=0.5, granularity="unit", layers="*feedforward_intermediate_dense")
    result = rk.compact(model)
    assert result.units["transformer_layer_0/feedforward_intermediate_dense"][0] == 32
    after = sum(result.units[f"transformer_layer_{i}/feedforward_intermediate_dense"][1] for i in range(2))
    assert after == 32  # half of 2 x 32 units, by one global cut
    assert result.params_before - result.params_after == 32 * (16 + 1 + 16)
    x = bert_inputs(4)
    assert_same_outputs(model, result.model, x)
    encoder = result.model.get_layer("transformer_layer_0")
    assert encoder.get_config()["intermediate_dim"] == result.units[
        "transformer_layer_0/feedforward_intermediate_dense"][1]
    result.model.save(tmp_path / "small.keras")
    assert_same_outputs(model, keras.saving.load_model(tmp_path / "small.keras"), x)


def test_compact_removes_dead_feed_forward_units_of_a_plain_keras_transformer_block():
    inputs = keras.Input((8, 16))
    h = keras.layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    h = keras.layers.LayerNormalization(name="ln1")(keras.layers.Add()([inputs, h]))
    f = keras.layers.Dense(64, activation="gelu", name="ffn_in")(h)
    f = keras.layers.Dense(16, name="ffn_out")(f)
    h = keras.layers.LayerNormalization(name="ln2")(keras.layers.Add()([h, f]))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(h)))
    ffn_in = model.get_layer("ffn_in")
    ffn_in.bias.assign(np.random.default_rng(0).normal(size=64).astype("float32"))
    rk.prune(model, sparsity=0.5, granularity="unit", layers="ffn_in")
    result = rk.compact(model)
    assert result.units["ffn_in"] == (64, 32) and result.units["ffn_out"] == (16, 16)
    assert_same_outputs(model, result.model, np.random.default_rng(1).normal(size=(4, 8, 16)).astype("float32"))
