"""Whole blocks: `granularity="block"` in `prune` and the shrink, the block
score, and `compact` taking removed blocks out (KerasHub encoder and decoder
layers, a plain-Keras residual block)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from conftest import assert_refused_and_unchanged, row
from keras_regkit.pruning import blocks as blocks_lib

L = keras.layers
keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is in the test extra; its blocks are the case here")


def bert():
    """A post-norm KerasHub BERT backbone (3 blocks) and a head."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=3, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=6, dropout=0.0)
    return keras.Model(backbone.input, L.Dense(2, name="head")(backbone.output["pooled_output"]), name="bert")


def bert_inputs(n=8):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 30, (n, 6)).astype("int32")
    return {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": np.ones_like(tokens)}


def decoders():
    """Pre-norm KerasHub decoders (as GPT-2's), causal, 3 blocks."""
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    h = L.Embedding(30, 8, name="embed")(tokens)
    for i in range(3):
        h = keras_hub.layers.TransformerDecoder(16, 2, normalize_first=True, name=f"decoder_{i}")(h)
    return keras.Model(tokens, L.Dense(3, name="logits")(h), name="gpt")


def token_inputs(n=8):
    return np.random.default_rng(1).integers(0, 30, (n, 6)).astype("int32")


def residual(widths=(8, 8, 8, 8)):
    """Plain-Keras pre-norm residual blocks: x + Dense(relu(Dense(LN(x)))),
    then a projection to the next width when it changes."""
    inputs = keras.Input((widths[0],), name="x")
    h = inputs
    for i, width in enumerate(widths):
        if h.shape[-1] != width:
            h = L.Dense(width, name=f"project_{i}")(h)
        branch = L.LayerNormalization(name=f"norm_{i}")(h)
        branch = L.Dense(16, activation="relu", name=f"inner_{i}")(branch)
        h = L.Add(name=f"add_{i}")([h, L.Dense(width, name=f"outer_{i}")(branch)])
    return keras.Model(inputs, L.Dense(2, name="out")(h), name="residual")


def residual_inputs(n=16, width=8):
    return np.random.default_rng(1).normal(size=(n, width)).astype("float32")


CASES = {"bert_post_norm": (bert, bert_inputs), "decoder_pre_norm": (decoders, token_inputs),
         "plain_residual": (residual, residual_inputs)}


def randomize(model):
    """Nonzero biases and layer norms everywhere, so a removed block that
    left anything behind would show."""
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if variable.path.endswith(("bias", "beta", "gamma")):
            variable.assign(variable + rng.normal(scale=0.3, size=variable.shape).astype("float32"))


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.slow  # three models compacted, and one process that loads them without keras_regkit
def test_compact_takes_removed_blocks_out_with_the_same_outputs_and_reloads_without_keras_regkit(tmp_path):
    saved = {}
    for name, (make, inputs) in CASES.items():
        model = make()
        randomize(model)
        x = inputs()
        found = blocks_lib.find(model)
        assert len(found) == (3 if name != "plain_residual" else 4)
        rk.prune(model, sparsity=1.0, granularity="block", layers=found[1].layer.name)
        assert [blocks_lib.is_removed(b) for b in found] == [False, True, False] + [False] * (len(found) - 3)
        assert rk.dead_units(model).get(f"{found[1].path}/feedforward_intermediate_dense", (16, 16))[0] == 16
        result = rk.compact(model)
        assert result.removed_blocks == (found[1].path,)
        names = [layer.name for layer in result.model._flatten_layers(include_self=False)]
        assert found[1].layer.name not in names and found[0].layer.name in names
        if name == "bert_post_norm":  # a removed post-norm block is its two layer norms
            assert f"{found[1].layer.name}_feedforward_layer_norm" in names
        if name == "plain_residual":  # the branch is gone with its block
            assert not {"norm_1", "inner_1", "outer_1"} & set(names)
        assert result.params_after < result.params_before
        np.testing.assert_allclose(predict(result.model, x), predict(model, x), rtol=1e-5, atol=1e-5)
        result.model.save(tmp_path / f"{name}.keras")
        np.savez(tmp_path / f"{name}_x.npz", *(x.values() if isinstance(x, dict) else [x]))
        saved[name] = predict(model, x)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["keras_regkit"] = None
        import keras, keras_hub, numpy as np
        for name, keys in {[(n, None) for n in CASES]!r}:
            model = keras.saving.load_model(name + ".keras")
            arrays = list(np.load(name + "_x.npz").values())
            x = dict(zip(["token_ids", "segment_ids", "padding_mask"], arrays)) if len(arrays) == 3 else arrays[0]
            np.save(name + "_y.npy", keras.ops.convert_to_numpy(model(x)))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    for name, expected in saved.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}_y.npy"), expected, rtol=1e-5, atol=1e-5)


def scale_block(block, factor):
    for layer in block.last:
        layer.kernel.assign(layer.kernel * factor)
        layer.bias.assign(layer.bias * factor)


def test_the_block_that_moves_its_output_least_scores_lowest_and_goes_first():
    model = decoders()
    randomize(model)
    found = blocks_lib.find(model)
    scale_block(found[2], 0.01)
    x = token_inputs(32)
    for score in (blocks_lib.block_scores, blocks_lib.output_scores):
        scores = score(model, found, x)
        assert np.argmin(scores) == 2 and scores[2] < 0.1 * min(scores[:2]), score.__name__
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    blocks_lib.output_scores(model, found, x)  # removes each block by its call, not its weights
    assert all((a == keras.ops.convert_to_numpy(v)).all() for a, v in zip(before, model.weights))
    rk.prune(model, sparsity=0.34, granularity=rk.pruning.Blocks(calibration_data=x))
    assert [blocks_lib.is_removed(b) for b in found] == [False, False, True]
    assert blocks_lib.block_scores(model, found, x)[2] == 0.0  # removed: it computes what it would removed


def test_a_block_is_removed_only_when_its_output_biases_are_zero_too():
    model = residual()
    randomize(model)
    block = blocks_lib.find(model)[1]
    block.last[0].kernel.assign(np.zeros(block.last[0].kernel.shape, "float32"))
    assert not blocks_lib.is_removed(block)  # its bias still adds to the stream
    assert rk.compact(model).removed_blocks == ()
    block.last[0].bias.assign(np.zeros(block.last[0].bias.shape, "float32"))
    assert blocks_lib.is_removed(block) and rk.compact(model).removed_blocks == ("add_1",)


def test_a_removed_post_norm_layer_called_twice_shares_its_norm_copies():
    # ALBERT-style sharing: one transformer layer called on its own output.
    import keras_hub

    inputs = keras.Input((5, 8))
    encoder = keras_hub.layers.TransformerEncoder(16, 2, name="shared")
    model = keras.Model(inputs, keras.layers.Dense(3)(encoder(encoder(inputs))))
    randomize(model)
    block = blocks_lib.find(model)[0]
    for layer in block.last:
        for variable in (layer.kernel, layer.bias):
            variable.assign(np.zeros(variable.shape, "float32"))
    result = rk.compact(model)
    assert result.removed_blocks == ("shared",)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    np.testing.assert_allclose(predict(result.model, x), predict(model, x), rtol=1e-5, atol=1e-5)


def test_compact_takes_out_a_removed_block_among_blocks_of_different_widths():
    model = residual((8, 8, 16))
    randomize(model)
    block = blocks_lib.find(model, same_width=False)[2]
    for variable in (block.last[0].kernel, block.last[0].bias):
        variable.assign(np.zeros(variable.shape, "float32"))
    result = rk.compact(model)
    assert result.removed_blocks == ("add_2",)
    x = residual_inputs()
    np.testing.assert_allclose(predict(result.model, x), predict(model, x), rtol=1e-5, atol=1e-5)


def test_the_weight_score_without_data_ranks_by_the_blocks_weights():
    model = residual()
    found = blocks_lib.find(model)
    scale_block(found[0], 0.01)
    rk.prune(model, sparsity=0.25, granularity="block")
    assert [blocks_lib.is_removed(b) for b in found] == [True, False, False, False]


@pytest.mark.parametrize("mode", ["sparsity", pytest.param("tolerance", marks=pytest.mark.slow)])  # 40 steps
def test_the_shrink_removes_whole_blocks_and_compact_takes_them_out(mode):
    model = residual()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = residual_inputs(64)
    # Targets far from any prediction: the loss barely moves with the blocks, every level holds.
    y = predict(model, x) + np.random.default_rng(0).normal(scale=10.0, size=(64, 2)).astype("float32")
    kwargs = {"sparsity": 0.5} if mode == "sparsity" else {"tolerance": 1.0, "monitor": "val_loss"}
    result = rk.shrink(model, x, y, epochs=2 if mode == "sparsity" else 10, batch_size=16, validation_data=(x, y),
                       granularity="block", score="magnitude", **kwargs)
    removed = [blocks_lib.is_removed(b) for b in blocks_lib.find(model)]
    assert sum(removed) == (2 if mode == "sparsity" else 3)  # 3 of 4: the tolerance mode's top level, 0.75
    assert result.sparsity == sum(removed) / 4 and "removed blocks" in str(result)
    small = rk.compact(model)
    assert len(small.removed_blocks) == sum(removed)
    np.testing.assert_allclose(predict(small.model, x), predict(model, x), rtol=1e-5, atol=1e-5)


def cached_decoder():
    tokens, cache = keras.Input((6,), dtype="int32"), keras.Input((2, 6, 2, 4))
    h = L.Embedding(20, 8)(tokens)
    out = keras_hub.layers.TransformerDecoder(16, 2, name="dec")(
        h, self_attention_cache=cache, self_attention_cache_update_index=0)
    return keras.Model([tokens, cache], out[0] if isinstance(out, tuple) else out)


def not_residual():
    inputs = keras.Input((4,))
    a, b = L.Dense(4, name="a")(inputs), L.Dense(4, name="b")(inputs)
    return keras.Model(inputs, L.Add(name="join")([a, b]))


class DoubledEncoder(keras_hub.layers.TransformerEncoder):
    """A subclass whose own `call` does more than its sublayers: zeroing
    them would leave 2 * LN(LN(x)), not what `compact`'s bypass computes."""

    def call(self, inputs, **kwargs):
        return 2.0 * super().call(inputs, **kwargs)


def subclassed_encoders():
    inputs = keras.Input((6, 8))
    h = keras_hub.layers.TransformerEncoder(16, 2, name="plain")(inputs)
    h = DoubledEncoder(16, 2, name="doubled")(h)
    return keras.Model(inputs, L.Dense(2)(h))


def test_a_subclass_with_its_own_call_is_not_taken_for_a_block():
    model = subclassed_encoders()
    assert [block.path for block in blocks_lib.find(model)] == ["plain"]


def refused(make, call):
    """`call(model)` on a fresh `make()`, checked to leave it unchanged
    when it raises."""
    def check(_):
        model = make()
        before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
        try:
            call(model)
        finally:
            for old, v in zip(before, model.weights):
                np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(v))
    return check


BAD_INPUT = [
    row("block-not-residual", refused(not_residual, lambda m: rk.prune(m, sparsity=1.0, granularity="block",
                                                                         layers="join")),
        ValueError, "layer 'join' (Add) is not a residual block that can be removed: neither input"),
    row("block-widths-differ", refused(lambda: residual((8, 8, 16)), lambda m: rk.prune(m, sparsity=0.5,
                                                                                         granularity="block")),
        ValueError, "the selected blocks differ in width ({'add_0': 8, 'add_1': 8, 'add_2': 16})"),
    row("block-decoder-with-cache", refused(cached_decoder, lambda m: rk.prune(m, sparsity=1.0, granularity="block")),
        ValueError, "cannot remove decoder 'dec': the model calls it with a cache (['self_attention_cache'])"),
    row("block-subclass-with-own-call", refused(subclassed_encoders, lambda m: rk.prune(
        m, sparsity=1.0, granularity="block", layers="doubled")),
        ValueError, "cannot remove layer 'doubled': its class DoubledEncoder subclasses TransformerEncoder"),
    row("block-none-in-model", lambda m: rk.prune(m, sparsity=0.5, granularity="block"),
        ValueError, "granularity='block' found no block to remove in model"),
    row("block-shrink-none-in-model", lambda m: rk.shrink(m, np.zeros((4, 6)), np.zeros((4, 4)), sparsity=0.5,
                                                          granularity="block"),
        ValueError, "granularity='block' found no block to remove", lambda m: m.compile(optimizer="adam", loss="mse")),
    row("granularity-unknown-names-block", lambda m: rk.prune(m, sparsity=0.5, granularity="blocks"),
        ValueError, "expected 'weight', 'unit', 'head', 'block' or 'N:M'"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
