"""`compact` on sublayers with nothing left (issue #40): an attention layer
whose every head is dead, a feed-forward pair whose every unit is dead, are
written as the constant they compute (added to the residual around them),
so the compacted model computes what the shrunk one did, saves, and reloads
without keras_regkit. A cached decoder, or attention scores asked of a layer
without heads, are refused."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.compacting import bypass
from keras_regkit.layers import graph as graph_lib
from keras_regkit.pruning import units as units_lib

from conftest import assert_refused_and_unchanged, row

L = keras.layers
HEADS, HEAD_DIM, HIDDEN, SEQ, FFN = 2, 4, 8, 5, 16


def numpy(value):
    return keras.ops.convert_to_numpy(value).copy()


def randomize(model, seed=0):
    """Weights far from their initial ones, biases and norms included, so
    that a lost constant or a wrong norm shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.dtype.startswith("float"):
            variable.assign(rng.normal(scale=0.4, size=variable.shape).astype(variable.dtype))


def kill_heads(layer):
    kernel = units_lib.head_kernel(layer)
    kernel.assign(np.zeros(kernel.shape, "float32"))


def kill_units(dense):
    dense.kernel.assign(np.zeros(dense.kernel.shape, "float32"))


def zero_bias(dense):
    dense.bias.assign(np.zeros(dense.bias.shape, "float32"))


def sequences(n=3, seed=1):
    return np.random.default_rng(seed).normal(size=(n, SEQ, HIDDEN)).astype("float32")


def outputs(model, x):
    return numpy(model(x, training=False))


def assert_same(expected, actual, x):
    np.testing.assert_allclose(outputs(actual, x), outputs(expected, x), rtol=1e-5, atol=1e-5)


def layer_names(model):
    return [layer.name for layer in model.layers]


def hub():
    return pytest.importorskip("keras_hub", reason="KerasHub is in the test extra; its layers are the case here")


# -- the models: each returns (model, inputs) with its empty sublayers made ---------------


def encoders(normalize_first):
    """Two KerasHub encoders: layer 0 without heads, layer 1 without
    feed-forward units."""
    keras_hub = hub()
    keras.utils.set_random_seed(0)
    x = keras.Input((SEQ, HIDDEN))
    h = x
    for i in range(2):
        h = keras_hub.layers.TransformerEncoder(FFN, HEADS, normalize_first=normalize_first, name=f"enc{i}")(h)
    model = keras.Model(x, L.Dense(3, name="out")(h))
    randomize(model)
    kill_heads(model.get_layer("enc0")._self_attention_layer)
    kill_units(model.get_layer("enc1")._feedforward_intermediate_dense)
    return model, sequences()


def causal_decoders():
    """A GPT-2-like stack: token embeddings, two causal decoders (layer 0
    without heads, layer 1 without feed-forward units), logits."""
    keras_hub = hub()
    keras.utils.set_random_seed(0)
    tokens = keras.Input((SEQ,), dtype="int32")
    h = L.Embedding(20, HIDDEN, name="embed")(tokens)
    for i in range(2):
        h = keras_hub.layers.TransformerDecoder(FFN, HEADS, normalize_first=True, name=f"dec{i}")(h)
    model = keras.Model(tokens, L.Dense(20, name="logits")(h))
    randomize(model)
    kill_heads(model.get_layer("dec0")._self_attention_layer)
    kill_units(model.get_layer("dec1")._feedforward_intermediate_dense)
    return model, np.random.default_rng(2).integers(0, 20, size=(3, SEQ))


def plain_residual_block(residual=True):
    """A user's block of plain Keras layers: attention (every head dead),
    a residual sum and a norm, a Dense-Dense feed-forward (every unit of the
    first dead) with its residual sum; without `residual`, the attention
    feeds the head alone."""
    keras.utils.set_random_seed(0)
    x = keras.Input((SEQ, HIDDEN))
    a = L.MultiHeadAttention(HEADS, HEAD_DIM, name="mha")(x, x)
    if not residual:
        model = keras.Model(x, L.Dense(3, name="out")(L.Flatten()(a)))
        randomize(model)
        kill_heads(model.get_layer("mha"))
        return model, sequences()
    h = L.LayerNormalization(name="norm")(L.Add()([x, a]))
    f = L.Dense(HIDDEN, name="ffn_out")(L.Dense(FFN, activation="gelu", name="ffn_in")(h))
    model = keras.Model(x, L.Dense(3, name="out")(L.Add()([h, f])))
    randomize(model)
    kill_heads(model.get_layer("mha"))
    kill_units(model.get_layer("ffn_in"))
    return model, sequences()


# -- the bypass: same outputs, no empty sublayer left ------------------------------------


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post-norm", "pre-norm"])
def test_keras_hub_encoders_without_heads_or_units_compute_the_same(normalize_first):
    model, x = encoders(normalize_first)
    result = rk.compact(model)
    assert_same(model, result.model, x)
    assert result.units["enc0/self_attention_layer"] == (HEADS, 0)
    assert result.units["enc1/feedforward_intermediate_dense"] == (FFN, 0)
    names = layer_names(result.model)
    assert "enc0_self_attention_layer" not in names and "enc1_feedforward_intermediate_dense" not in names
    assert "enc0_feedforward_intermediate_dense" in names and "enc1_self_attention_layer" in names
    # Every weight of the attention and of the feed-forward pair: their output biases are constants now.
    per_attention = 4 * (HIDDEN * HEADS * HEAD_DIM) + 3 * HEADS * HEAD_DIM + HIDDEN
    assert result.params_before - result.params_after == per_attention + HIDDEN * FFN + FFN + FFN * HIDDEN + HIDDEN


def test_a_model_loaded_in_a_fresh_session_compacts_though_its_operation_names_are_keras_next_ones(tmp_path):
    """A loaded model keeps its operations' names ("get_item" for a slice)
    without Keras counting them: the constant `compact` builds for the empty
    attention (a slice of the query) was named "get_item" too, and the
    rebuilt graph was refused for the duplicate name."""
    keras_hub = hub()
    x = keras.Input((SEQ, HIDDEN))
    h = keras_hub.layers.TransformerEncoder(FFN, HEADS, name="enc0")(x[..., :HIDDEN])
    keras.Model(x, L.Dense(3, name="out")(h)).save(tmp_path / "sliced.keras")
    keras.utils.clear_session()  # a new process: Keras has named nothing yet
    model = keras.saving.load_model(tmp_path / "sliced.keras")
    assert "get_item" in [operation.name for operation in model.operations]
    randomize(model)
    kill_heads(model.get_layer("enc0")._self_attention_layer)
    result = rk.compact(model)
    assert_same(model, result.model, sequences())
    assert result.units["enc0/self_attention_layer"] == (HEADS, 0)


def test_reserved_names_count_each_prefix_past_its_highest_number(tmp_path):
    """After `reserve_names`, Keras' next automatic names are none of the
    model's: "dense" and "dense_1" taken means the next Dense is "dense_2"
    or later (counting only the full names would give "dense_1" again)."""
    keras.utils.clear_session()
    x = keras.Input((4,))
    model = keras.Model(x, L.Dense(2)(L.Dense(3)(x)[..., :2]))
    model.save(tmp_path / "auto_named.keras")
    keras.utils.clear_session()
    model = keras.saving.load_model(tmp_path / "auto_named.keras")
    taken = {operation.name for operation in model.operations}
    assert {"dense", "dense_1", "get_item"} <= taken
    graph_lib.reserve_names(model)
    assert L.Dense(1).name not in taken
    inputs = keras.Input((4,))
    assert not taken & {operation.name for operation in keras.Model(inputs, inputs[..., :1]).operations}


def test_reserved_names_skip_numbers_out_of_reach_and_other_digits():
    """A name like "dense_100000" is not counted to (a name with a date or
    a step in it would take minutes), and a non-ASCII digit is no number."""
    keras.utils.clear_session()
    x = keras.Input((4,))
    h = L.Dense(3, name="dense_100000")(L.Dense(3, name="dense_\u00b2")(x))
    model = keras.Model(x, L.Dense(2)(h))
    graph_lib.reserve_names(model)
    assert keras.backend.get_uid("dense") < 100
    assert L.Dense(1).name not in {layer.name for layer in model.layers}


def test_the_constant_fills_the_last_axis_when_the_sequence_is_as_long_as_the_hidden_size():
    """TensorFlow's `ops.add` takes a vector as long as a tensor's axis 1
    for a channels-first bias: the constant of an attention layer without
    heads, added so, was wrong whenever the sequence length was the hidden
    size."""
    keras_hub = hub()
    keras.utils.set_random_seed(0)
    x = keras.Input((HIDDEN, HIDDEN))
    model = keras.Model(x, L.Dense(3, name="out")(
        keras_hub.layers.TransformerEncoder(FFN, HEADS, name="enc0")(x)))
    randomize(model)
    kill_heads(model.get_layer("enc0")._self_attention_layer)
    result = rk.compact(model)
    assert result.units["enc0/self_attention_layer"] == (HEADS, 0)
    assert_same(model, result.model, np.random.default_rng(1).normal(size=(3, HIDDEN, HIDDEN)).astype("float32"))


@pytest.mark.parametrize("emptied", ["heads", "block"])
def test_a_sequential_holding_encoders_compacts(emptied):
    """`clone_model` rebuilds only Functional models with a `call_function`:
    a Sequential is compacted through its own functional graph."""
    keras_hub = hub()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((SEQ, HIDDEN))]
                             + [keras_hub.layers.TransformerEncoder(FFN, HEADS, name=f"enc{i}") for i in range(2)]
                             + [L.Dense(3, name="out")])
    randomize(model)
    if emptied == "heads":
        kill_heads(model.get_layer("enc0")._self_attention_layer)
    else:
        rk.prune(model, sparsity=0.5, granularity="block")
    result = rk.compact(model)
    if emptied == "heads":
        assert result.units["enc0/self_attention_layer"] == (HEADS, 0)
    else:
        assert len(result.removed_blocks) == 1
    assert_same(model, result.model, sequences())


def test_a_causal_decoder_stack_without_heads_or_units_stays_causal():
    model, tokens = causal_decoders()
    result = rk.compact(model)
    assert_same(model, result.model, tokens)
    assert result.units["dec0/self_attention"] == (HEADS, 0)
    assert result.units["dec1/feedforward_intermediate_dense"] == (FFN, 0)
    changed = tokens.copy()
    changed[:, -1] = (changed[:, -1] + 3) % 20
    np.testing.assert_allclose(outputs(result.model, changed)[:, :-1], outputs(result.model, tokens)[:, :-1],
                               rtol=1e-5, atol=1e-5)


def test_a_plain_keras_residual_block_loses_its_attention_and_feed_forward():
    model, x = plain_residual_block()
    result = rk.compact(model)
    assert_same(model, result.model, x)
    assert not {"mha", "ffn_in", "ffn_out"} & set(layer_names(result.model))
    assert result.units["mha"] == (HEADS, 0) and result.units["ffn_in"] == (FFN, 0)
    assert result.units["ffn_out"] == (HIDDEN, 0) and result.dead["ffn_out"] == 0
    assert result.params_after == model.count_params() - sum(
        model.get_layer(n).count_params() for n in ("mha", "ffn_in", "ffn_out"))


def dense_feed_forward():
    """A residual Dense-Dense feed-forward block, every unit of the first
    dead."""
    keras.utils.set_random_seed(0)
    x = keras.Input((SEQ, HIDDEN))
    f = L.Dense(HIDDEN, name="ffn_out")(L.Dense(FFN, activation="gelu", name="ffn_in")(x))
    h = L.Add()([x, f])
    model = keras.Model(x, L.Dense(3, name="out")(h))
    randomize(model)
    kill_units(model.get_layer("ffn_in"))
    return model, sequences()


def test_a_plain_dense_feed_forward_alone_is_bypassed():
    model, x = dense_feed_forward()
    result = rk.compact(model)
    assert_same(model, result.model, x)
    assert not {"ffn_in", "ffn_out"} & set(layer_names(result.model))


def test_an_attention_without_residual_becomes_its_constant_alone():
    # Nothing to bypass, and nothing lost: the layer computed a constant.
    model, x = plain_residual_block(residual=False)
    result = rk.compact(model)
    assert_same(model, result.model, x)
    assert "mha" not in layer_names(result.model)
    ones = np.ones_like(x)
    np.testing.assert_allclose(outputs(result.model, ones), outputs(result.model, x), rtol=1e-6, atol=1e-6)


class ScaledAttention(L.MultiHeadAttention):
    """An attention subclass whose `call` does more than the attention."""

    def call(self, query, value, key=None, **kwargs):
        return 2.0 * super().call(query, value, key=key, **kwargs) + 1.0


def test_an_attention_subclass_with_its_own_call_keeps_a_head_instead_of_the_constant():
    inputs = keras.Input((SEQ, HIDDEN))
    attention = ScaledAttention(num_heads=HEADS, key_dim=HEAD_DIM, name="mha")
    model = keras.Model(inputs, L.Dense(3)(attention(inputs, inputs)))
    randomize(model)
    kill_heads(attention)
    assert not bypass.all_heads_dead(attention)  # its `call` is not Keras' own
    x = sequences()
    result = rk.compact(model, custom_objects={"ScaledAttention": ScaledAttention})
    assert_same(model, result.model, x)
    assert result.model.get_layer("mha").num_heads == 1


def test_a_head_cut_to_the_last_head_then_compact_computes_the_same():
    model, x = plain_residual_block()
    rk.prune(model, sparsity=1.0, granularity="head")
    assert bypass.all_heads_dead(model.get_layer("mha"))
    assert_same(model, rk.compact(model).model, x)


# -- the contract with whole blocks: an empty block with zero biases --------------------


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post-norm", "pre-norm"])
def test_an_empty_block_with_zero_biases_is_the_identity_or_its_norms(normalize_first):
    keras_hub = hub()
    keras.utils.set_random_seed(0)
    x = keras.Input((SEQ, HIDDEN))
    encoder = keras_hub.layers.TransformerEncoder(FFN, HEADS, normalize_first=normalize_first, name="enc")
    model = keras.Model(x, encoder(x))
    randomize(model)
    kill_heads(encoder._self_attention_layer)
    zero_bias(units_lib.head_sublayers(encoder._self_attention_layer)[1])
    kill_units(encoder._feedforward_intermediate_dense)
    zero_bias(encoder._feedforward_intermediate_dense)  # relu(0) @ W2 = 0
    zero_bias(encoder._feedforward_output_dense)
    values = sequences()
    compacted = outputs(rk.compact(model).model, values)
    if normalize_first:
        np.testing.assert_array_equal(compacted, values)
    else:
        norms = encoder._self_attention_layer_norm, encoder._feedforward_layer_norm
        np.testing.assert_allclose(compacted, numpy(norms[1](norms[0](values))), rtol=1e-6, atol=1e-6)


# -- saved, and loaded where keras_regkit is not --------------------------------------------


@pytest.mark.slow  # four models compacted, and one process that loads them without keras_regkit
def test_the_compacted_models_reload_without_keras_regkit(tmp_path):
    cases = {"post_norm": lambda: encoders(False), "pre_norm": lambda: encoders(True),
             "decoders": causal_decoders, "plain": plain_residual_block}
    for name, build in cases.items():
        model, x = build()
        result = rk.compact(model)
        result.model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_y.npy", outputs(model, x))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["keras_regkit"] = None
        import keras, keras_hub, numpy as np
        for name in {list(cases)!r}:
            model = keras.saving.load_model(name + ".keras")
            y = keras.ops.convert_to_numpy(model(np.load(name + "_x.npy"), training=False))
            np.testing.assert_allclose(y, np.load(name + "_y.npy"), rtol=1e-5, atol=1e-5, err_msg=name)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]


# -- refused: nothing changed ----------------------------------------------------------------


def refused_and_unchanged(build):
    """A `BAD_INPUT` call: compacts the model `build()` gives and checks,
    whatever it raises, that its weights are as they were."""

    def call(_):
        model = build()
        before = [numpy(v) for v in model.weights]
        try:
            rk.compact(model)
        finally:
            for variable, value in zip(model.weights, before):
                np.testing.assert_array_equal(numpy(variable), value)

    return call


def cached_decoder():
    keras_hub = hub()
    sequence, cache = keras.Input((SEQ, HIDDEN)), keras.Input((2, SEQ, HEADS, HIDDEN // HEADS))
    decoder = keras_hub.layers.TransformerDecoder(FFN, HEADS, name="dec")
    model = keras.Model([sequence, cache], decoder(sequence, self_attention_cache=cache,
                                                   self_attention_cache_update_index=0))
    kernel = units_lib.head_kernel(decoder._self_attention_layer)
    kernel.assign(np.concatenate([np.zeros((1,) + tuple(kernel.shape[1:]), "float32"), numpy(kernel)[1:]]))
    return model  # one head dead: its cache would lose that head


def attention_scores_of_an_empty_attention():
    x = keras.Input((SEQ, HIDDEN))
    out, scores = L.MultiHeadAttention(HEADS, HEAD_DIM, name="mha")(x, x, return_attention_scores=True)
    model = keras.Model(x, [out, scores])
    kill_heads(model.get_layer("mha"))
    return model


BAD_INPUT = [
    row("compact-decoder-with-a-cache", refused_and_unchanged(cached_decoder), ValueError,
        "transformer layer 'dec' is called with a key/value cache"),
    row("compact-attention-scores-of-a-layer-without-heads",
        refused_and_unchanged(attention_scores_of_an_empty_attention), ValueError,
        "attention layer 'mha' has every head dead and is called with `return_attention_scores=True`"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
