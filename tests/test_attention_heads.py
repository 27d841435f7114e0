"""Attention heads as units (issue #27): which heads a cut takes, that a
shrink kills them, and that `compact` rebuilds attention layers (Keras'
`MultiHeadAttention`, KerasHub's `TransformerEncoder` and `TransformerDecoder`)
with fewer heads and the same outputs, saved and reloaded."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import units as units_lib

from conftest import assert_refused_and_unchanged, right_checks, row, run_with_fixtures

L = keras.layers
HEADS, HEAD_DIM, HIDDEN, SEQ = 4, 4, 8, 6


def numpy(variable):
    return keras.ops.convert_to_numpy(variable).copy()


def attention_model(layers=1, seed=0):
    """Stacked self-attention blocks (attention, residual, norm), a
    feed-forward Dense, a pooled Dense head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SEQ, HIDDEN))
    h = inputs
    for i in range(layers):
        a = L.MultiHeadAttention(HEADS, HEAD_DIM, name=f"mha{i}")(h, h)
        h = L.LayerNormalization(name=f"ln{i}")(L.Add()([h, a]))
    h = L.Dense(16, activation="relu", name="ffn")(h)
    outputs = L.Dense(3, name="out")(L.GlobalAveragePooling1D()(h))
    model = keras.Model(inputs, outputs)
    for layer in model.layers:  # biases that are not zero, so that slicing them shows
        if isinstance(layer, L.MultiHeadAttention):
            for sub in units_lib.head_sublayers(layer)[0] + (units_lib.head_sublayers(layer)[1],):
                sub.bias.assign(np.random.default_rng(seed).normal(size=sub.bias.shape).astype("float32"))
    return model


def head_parts(layer):
    """(variable, heads axis) of every part of `layer`'s heads."""
    projections, output = units_lib.head_sublayers(layer)
    return [(v, units_lib.head_axis(sub, v, layer)) for sub in projections + (output,) for v in sub.weights
            if units_lib.head_axis(sub, v, layer) is not None]


def scale_head(layer, head, factor):
    """Multiplies every slice of one head (query, key, value, output) by `factor`."""
    for variable, axis in head_parts(layer):
        value = numpy(variable)
        index = [slice(None)] * value.ndim
        index[axis] = head
        value[tuple(index)] *= factor
        variable.assign(value)


def dead_heads(layer):
    return [int(i) for i in np.flatnonzero(units_lib.dead_mask(layer))]


def inputs(n=5, seed=1):
    return np.random.default_rng(seed).normal(size=(n, SEQ, HIDDEN)).astype("float32")


def assert_same_outputs(expected_model, actual_model, x):
    expected = keras.ops.convert_to_numpy(expected_model(x, training=False))
    actual = keras.ops.convert_to_numpy(actual_model(x, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# -- what a head is, and which ones a cut takes ---------------------------------


def test_a_head_is_dead_when_its_output_projection_slice_is_zero():
    model = attention_model()
    mha = model.get_layer("mha0")
    output_kernel = units_lib.head_kernel(mha)
    value = numpy(output_kernel)
    value[2] = 0.0  # query, key and value of head 2 untouched
    output_kernel.assign(value)
    assert rk.dead_units(model)["mha0"] == (1, HEADS)
    # Exactly nothing: the output equals the same layer with head 2's value slice zeroed too.
    before = keras.ops.convert_to_numpy(model(inputs()))
    value_kernel = units_lib.head_sublayers(mha)[0][2].kernel
    v = numpy(value_kernel)
    v[:, 2] = 123.0
    value_kernel.assign(v)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs())), before, rtol=1e-6, atol=1e-6)


def test_planted_weak_heads_are_the_ones_cut_across_layers():
    model = attention_model(layers=2)
    scale_head(model.get_layer("mha0"), 2, 0.05)
    scale_head(model.get_layer("mha1"), 0, 0.05)
    rk.prune(model, sparsity=0.25, granularity="head")  # 2 of the 8 heads
    assert dead_heads(model.get_layer("mha0")) == [2]
    assert dead_heads(model.get_layer("mha1")) == [0]
    kernels = [(v, axis) for v, axis in head_parts(model.get_layer("mha0")) if v.path.endswith("kernel")]
    assert len(kernels) == 4
    for variable, axis in kernels:  # every kernel slice of it is zero, not just its output's
        assert not np.take(numpy(variable), 2, axis=axis).any()
        assert np.take(numpy(variable), 1, axis=axis).any()


def test_a_head_score_counts_its_query_key_and_value_not_only_its_output():
    model = attention_model()
    mha = model.get_layer("mha0")
    # Head 1's output slice is the weakest, but its query/key/value are strong.
    scale_head(mha, 1, 3.0)
    output_kernel = units_lib.head_kernel(mha)
    value = numpy(output_kernel)
    value[1] *= 0.5 / 3.0
    output_kernel.assign(value)
    scale_head(mha, 3, 0.5)  # weaker in all four
    rk.prune(model, sparsity=0.25, granularity="head")
    assert dead_heads(mha) == [3]


def test_a_cut_may_take_every_head_of_a_layer():
    # `compact` bypasses a layer without heads exactly (tests/test_compact_bypass.py).
    model = attention_model(layers=2)
    rk.prune(model, sparsity=1.0, granularity="head")
    assert dead_heads(model.get_layer("mha0")) == dead_heads(model.get_layer("mha1")) == [0, 1, 2, 3]


def test_unit_granularity_ranks_units_and_heads_in_one_cut():
    model = attention_model()
    scale_head(model.get_layer("mha0"), 0, 0.01)
    rk.prune(model, sparsity=0.5, granularity="unit", layers=lambda layer: layer.name in ("mha0", "ffn"))
    dead = rk.dead_units(model)
    assert dead_heads(model.get_layer("mha0"))[:1] == [0]
    assert dead["mha0"][0] + dead["ffn"][0] == round(0.5 * (HEADS + 16))
    assert dead["out"] == (0, 3)


# -- the shrink -----------------------------------------------------------------


def test_shrink_with_heads_kills_heads_and_compact_keeps_its_outputs():
    model = attention_model(layers=2)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x, y = inputs(64), np.random.default_rng(2).integers(0, 3, 64)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    result = rk.shrink(model, x, y, sparsity=0.5, granularity="head", epochs=2, batch_size=16)
    dead = [len(dead_heads(model.get_layer(name))) for name in ("mha0", "mha1")]
    assert sum(dead) == 4  # half the 8 heads
    assert result.unit_sparsity == pytest.approx(0.5)
    small = rk.compact(model)
    for name, d in zip(("mha0", "mha1"), dead):
        assert small.units[name] == (HEADS, HEADS - d)
    assert_same_outputs(model, small.model, x)


# -- compact ---------------------------------------------------------------------


def test_compact_rebuilds_multi_head_attention_with_the_kept_heads(tmp_path):
    model = attention_model(layers=2)
    scale_head(model.get_layer("mha0"), 1, 0.01)
    scale_head(model.get_layer("mha0"), 3, 0.01)
    scale_head(model.get_layer("mha1"), 2, 0.01)
    rk.prune(model, sparsity=3 / 8, granularity="head")
    result = rk.compact(model)
    assert result.units["mha0"] == (4, 2) and result.units["mha1"] == (4, 3)
    assert result.dead["mha0"] == 2
    mha0 = result.model.get_layer("mha0")
    assert (mha0.num_heads, mha0.get_config()["key_dim"]) == (2, HEAD_DIM)
    # The kept heads' slices, in order: heads 0 and 2 of the query kernel.
    np.testing.assert_array_equal(numpy(units_lib.head_sublayers(mha0)[0][0].kernel),
                                  numpy(units_lib.head_sublayers(model.get_layer("mha0"))[0][0].kernel)[:, [0, 2]])
    per_head = HIDDEN * HEAD_DIM * 4 + HEAD_DIM * 3  # q, k, v, o kernels and q, k, v biases
    assert result.params_before - result.params_after == 3 * per_head
    x = inputs()
    assert_same_outputs(model, result.model, x)
    result.model.save(tmp_path / "small.keras")
    assert_same_outputs(model, keras.saving.load_model(tmp_path / "small.keras"), x)


# -- KerasHub ---------------------------------------------------------------------


def bert_classifier(keras_hub):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        dropout=0.0)
    outputs = L.Dense(2, name="head")(backbone.output["pooled_output"])
    return keras.Model(backbone.input, outputs)


def bert_inputs(n=4):
    rng = np.random.default_rng(0)
    mask = np.ones((n, 8), "int32")
    mask[1, 5:] = 0  # a padded sequence
    return {"token_ids": rng.integers(1, 50, size=(n, 8)), "segment_ids": np.zeros((n, 8), "int32"),
            "padding_mask": mask}


def randomize(model, seed=0):
    """Weights far from their initial ones (biases included), so that a
    wrong slice or a lost constant shows in the outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "embedding" not in variable.path and "norm" not in variable.path:
            variable.assign(rng.normal(scale=0.3, size=variable.shape).astype(variable.dtype))


def test_compact_keras_hub_encoders_with_fewer_heads_and_feed_forward_units(tmp_path):
    keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is in the test extra; its encoder is the case here")
    model = bert_classifier(keras_hub)
    randomize(model)
    encoder = model.get_layer("transformer_layer_1")
    scale_head(encoder._self_attention_layer, 2, 0.01)  # the weakest head of all
    rk.prune(model, sparsity=0.5, granularity="unit",
             layers=lambda layer: isinstance(layer, L.MultiHeadAttention) or layer.name == "feedforward_intermediate_dense")
    assert 2 in dead_heads(encoder._self_attention_layer)
    dead = rk.dead_units(model)
    heads_dead = {i: dead[f"transformer_layer_{i}/self_attention_layer"][0] for i in range(2)}
    units_dead = {i: dead[f"transformer_layer_{i}/feedforward_intermediate_dense"][0] for i in range(2)}
    assert sum(heads_dead.values()) >= 1 and sum(units_dead.values()) >= 1
    result = rk.compact(model)
    attention = {i: result.model.get_layer(f"transformer_layer_{i}_self_attention_layer") for i in range(2)
                 if heads_dead[i]}
    for i, layer in attention.items():
        assert type(layer) is L.MultiHeadAttention and layer.num_heads == 4 - heads_dead[i]
        assert layer.get_config()["key_dim"] == 4  # the heads keep their width
    assert result.units["transformer_layer_1/self_attention_layer"] == (4, 4 - heads_dead[1])
    x = bert_inputs()
    assert_same_outputs(model, result.model, x)
    path = tmp_path / "small.keras"
    result.model.save(path)
    assert_same_outputs(model, keras.saving.load_model(path), x)
    # It loads with Keras and KerasHub alone.
    np.savez(tmp_path / "x.npz", **x)
    code = textwrap.dedent("""
        import sys
        sys.modules["keras_regkit"] = None
        import keras, keras_hub, numpy as np
        model = keras.saving.load_model("small.keras")
        x = dict(np.load("x.npz"))
        np.save("y.npy", keras.ops.convert_to_numpy(model(x)))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_compact_keras_hub_decoder_with_fewer_heads_keeps_its_causal_and_padding_masks(tmp_path):
    keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is in the test extra; its decoder is the case here")
    keras.utils.set_random_seed(0)
    tokens, mask = keras.Input((8,), dtype="int32", name="tokens"), keras.Input((8,), dtype="int32", name="mask")
    h = L.Embedding(50, 16, name="embed")(tokens)
    for i in range(2):
        h = keras_hub.layers.TransformerDecoder(32, 4, name=f"decoder_{i}")(h, decoder_padding_mask=mask)
    model = keras.Model([tokens, mask], L.Dense(3, name="logits")(h))
    randomize(model)
    decoder = model.get_layer("decoder_0")
    scale_head(decoder._self_attention_layer, 1, 0.01)
    rk.prune(model, sparsity=0.25, granularity="head")
    assert 1 in dead_heads(decoder._self_attention_layer)
    kept = {i: HEADS - len(dead_heads(model.get_layer(f"decoder_{i}")._self_attention_layer)) for i in range(2)}
    assert sum(kept.values()) == 6
    result = rk.compact(model)
    for i in range(2):
        name = f"decoder_{i}_self_attention" if kept[i] < HEADS else f"decoder_{i}"
        assert result.model.get_layer(name).num_heads == kept[i]
    rng = np.random.default_rng(3)
    x = [rng.integers(1, 50, size=(3, 8)), np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6], "int32")]
    assert_same_outputs(model, result.model, x)
    # Causal: a later token does not change an earlier position's output.
    changed = [x[0].copy(), x[1]]
    changed[0][:, -1] = (changed[0][:, -1] + 7) % 50
    early = keras.ops.convert_to_numpy(result.model(changed))[:, :-1]
    np.testing.assert_allclose(early, keras.ops.convert_to_numpy(result.model(x))[:, :-1], rtol=1e-5, atol=1e-5)
    result.model.save(tmp_path / "small.keras")
    assert_same_outputs(model, keras.saving.load_model(tmp_path / "small.keras"), x)


# -- heads made dead by hand ---------------------------------------------------------


def kill_heads(layer, heads):
    """Makes `heads` of `layer` dead: their output projection slices zero."""
    kernel = units_lib.head_kernel(layer)
    value = numpy(kernel)
    value[heads] = 0.0
    kernel.assign(value)


# -- unusual attention layers: rebuilt right, or refused before anything is built ---


@keras.saving.register_keras_serializable("regkit_test")
class FixedHeads(L.MultiHeadAttention):
    """Fixes its heads and drops the config's: from_config builds 4 heads whatever it says."""

    def __init__(self, **kwargs):
        kwargs.pop("num_heads", None)
        kwargs.pop("key_dim", None)
        super().__init__(num_heads=HEADS, key_dim=HEAD_DIM, **kwargs)


@keras.saving.register_keras_serializable("regkit_test")
class FixedHeadsConfig(L.MultiHeadAttention):
    """Fixes its heads and leaves them out of its config: from_config with num_heads fails."""

    def __init__(self, **kwargs):
        super().__init__(num_heads=HEADS, key_dim=HEAD_DIM, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["num_heads"], config["key_dim"]
        return config


@keras.saving.register_keras_serializable("regkit_test")
class HeadsArgument(L.MultiHeadAttention):
    """A subclass that takes its heads as an argument: rebuilt with fewer."""

    def __init__(self, num_heads=HEADS, key_dim=HEAD_DIM, **kwargs):
        super().__init__(num_heads=num_heads, key_dim=key_dim, **kwargs)


def one_attention_model(layer, shape=(SEQ, HIDDEN), context=None, calls=1):
    """`layer` (called `calls` times, on `context` as keys and values if
    given) before a Dense, with random weights and head 1 dead."""
    keras.utils.set_random_seed(0)
    query = keras.Input(shape)
    inputs = [query] if context is None else [query, keras.Input(context)]
    h = query
    for _ in range(calls):
        h = layer(h, inputs[-1] if context is not None else h)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(h)))
    rng = np.random.default_rng(0)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    kill_heads(layer, [1])
    return model


def assert_compacts_to_three_heads(model, cls=L.MultiHeadAttention):
    result = rk.compact(model)
    rebuilt = result.model.get_layer("att")
    assert type(rebuilt) is cls and rebuilt.num_heads == HEADS - 1 and result.units["att"] == (HEADS, HEADS - 1)
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(2,) + tuple(i.shape[1:])).astype("float32") for i in model.inputs]
    assert_same_outputs(model, result.model, x)


def right_no_biases():
    assert_compacts_to_three_heads(one_attention_model(L.MultiHeadAttention(HEADS, HEAD_DIM, use_bias=False, name="att")))


def right_an_output_shape():
    assert_compacts_to_three_heads(one_attention_model(L.MultiHeadAttention(HEADS, HEAD_DIM, output_shape=5, name="att")))


def right_a_value_width_of_its_own_and_an_output_shape():
    if keras.backend.backend() == "jax":
        pytest.skip("Keras' MultiHeadAttention fails under JAX when value_dim differs from key_dim (itself, uncompacted)")
    assert_compacts_to_three_heads(one_attention_model(
        L.MultiHeadAttention(HEADS, HEAD_DIM, value_dim=6, output_shape=5, name="att")))


def right_attention_over_two_axes():
    assert_compacts_to_three_heads(one_attention_model(
        L.MultiHeadAttention(HEADS, HEAD_DIM, attention_axes=(1, 2), name="att"), shape=(3, 4, HIDDEN)))


def right_cross_attention_on_a_context_of_another_width():
    assert_compacts_to_three_heads(one_attention_model(L.MultiHeadAttention(HEADS, HEAD_DIM, name="att"),
                                                       context=(5, 3)))


def right_a_layer_called_twice():
    assert_compacts_to_three_heads(one_attention_model(L.MultiHeadAttention(HEADS, HEAD_DIM, name="att"), calls=2))


def right_a_gated_attention_loses_its_gate_with_its_heads():
    model = one_attention_model(L.MultiHeadAttention(HEADS, HEAD_DIM, use_gate=True, name="att"))
    assert_compacts_to_three_heads(model)
    gate = [v for v in rk.compact(model).model.get_layer("att").weights if "gate" in v.path]
    assert [tuple(v.shape) for v in gate] == [(HIDDEN, HEADS - 1, HEAD_DIM), (HEADS - 1, HEAD_DIM)]


def right_a_subclass_that_takes_num_heads_keeps_its_class():
    assert_compacts_to_three_heads(one_attention_model(HeadsArgument(name="att")), cls=HeadsArgument)


RIGHT = right_checks(
    right_no_biases,
    right_an_output_shape,
    right_a_value_width_of_its_own_and_an_output_shape,
    right_attention_over_two_axes,
    right_cross_attention_on_a_context_of_another_width,
    right_a_layer_called_twice,
    right_a_gated_attention_loses_its_gate_with_its_heads,
    right_a_subclass_that_takes_num_heads_keeps_its_class,
)


@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)


BAD_INPUT = [
    row("compact-subclass-fixing-num-heads", lambda m: rk.compact(one_attention_model(FixedHeads(name="att"))),
        ValueError, "attention layer 'att' (FixedHeads): its config does not let compact set `num_heads`"),
    row("compact-subclass-without-num-heads-in-config",
        lambda m: rk.compact(one_attention_model(FixedHeadsConfig(name="att"))), ValueError,
        "multiple values for keyword argument 'num_heads'"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def test_a_refused_attention_layer_is_refused_before_anything_is_built(monkeypatch):
    # The check comes before the clone: no layer of the new model is made.
    model = one_attention_model(FixedHeads(name="att"))
    before = [numpy(v) for v in model.weights]
    monkeypatch.setattr(keras.models, "clone_model", lambda *a, **k: pytest.fail("cloned before the check"))
    with pytest.raises(ValueError, match="built {'num_heads': 4, 'key_dim': 4, 'value_dim': 4}, not {'num_heads': 3"):
        rk.compact(model)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(numpy(variable), value)
