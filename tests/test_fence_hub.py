"""The fence's reads of KerasHub (`keras_regkit._keras.hub`): each runs on
the installed KerasHub and, if an upgrade moved what it reads, fails with
the message that names the version it was written for."""

import functools

import keras
import numpy as np
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import hub as fence

from conftest import fenced

keras_hub = pytest.importorskip("keras_hub")

HIDDEN, SEQ = 8, 5


call = functools.partial(fenced, library="keras_hub")


def built(layer, *args):
    layer(*args)
    return layer


def test_attention_sublayers_of_an_encoder_and_a_decoder():
    x = keras.Input((SEQ, HIDDEN))
    encoder = built(keras_hub.layers.TransformerEncoder(16, 2), x)
    assert list(call(fence.attention_sublayers, encoder)) == [fence.SELF_ATTENTION]
    decoder = built(keras_hub.layers.TransformerDecoder(16, 2), x, x)
    found = call(fence.attention_sublayers, decoder)
    assert list(found) == [fence.SELF_ATTENTION, fence.CROSS_ATTENTION]
    assert all(isinstance(sub, keras.layers.MultiHeadAttention) for sub in found.values())


def test_a_replaced_attention_and_the_traceable_mask_are_what_call_uses():
    x = keras.Input((SEQ, HIDDEN))
    decoder = built(keras_hub.layers.TransformerDecoder(16, 2), x)
    seen = []
    attention = decoder._self_attention_layer  # noqa: SLF001 - what the fence replaces, checked here

    def spy(*args, **kwargs):
        seen.append(True)
        return attention(*args, **kwargs)

    call(fence.replace_attention, decoder, fence.SELF_ATTENTION, spy)
    call(fence.use_traceable_self_attention_mask, decoder)
    # The traceable mask is causal: output i reads inputs up to i only.
    values = np.random.default_rng(0).normal(size=(2, SEQ, HIDDEN)).astype("float32")
    changed = values.copy()
    changed[:, -1] += 1.0
    # Tensors, not arrays: under PyTorch an array on the left of `x + residual` fails.
    first = keras.ops.convert_to_numpy(decoder.call(keras.ops.convert_to_tensor(values), use_causal_mask=True))
    second = keras.ops.convert_to_numpy(decoder.call(keras.ops.convert_to_tensor(changed), use_causal_mask=True))
    assert seen and np.allclose(first[:, :-1], second[:, :-1], atol=1e-5)
    mask = fence.traceable_self_attention_mask(values, None, None, True, None, None)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask)[0], np.tril(np.ones((SEQ, SEQ), "int32")))


def test_a_replaced_feedforward_pair_is_what_call_uses():
    x = keras.Input((SEQ, HIDDEN))
    encoder = built(keras_hub.layers.TransformerEncoder(16, 2), x)
    seen = []

    def inner(inputs):
        seen.append("inner")
        return inputs

    def outer(inputs):
        seen.append("outer")
        return keras.ops.zeros_like(inputs)

    call(fence.replace_feedforward, encoder, inner, outer)
    encoder.call(keras.ops.convert_to_tensor(np.ones((1, SEQ, HIDDEN), "float32")))
    assert seen == ["inner", "outer"]


def test_a_moved_read_names_keras_hub_and_the_version_it_was_written_for():
    class Moved:  # as a built KerasHub layer of a release without the private names
        built = True

    written = rf"written for keras_hub {WRITTEN_FOR['keras_hub']}.*has moved it"
    with pytest.raises(FenceError, match=rf"Moved\._self_attention_layer.*{written}"):
        fence.attention_sublayers(Moved())
    with pytest.raises(FenceError, match=rf"Moved\._self_attention_layer.*{written}"):
        fence.replace_attention(Moved(), fence.SELF_ATTENTION, None)
    with pytest.raises(FenceError, match=rf"Moved\._feedforward_intermediate_dense.*{written}"):
        fence.replace_feedforward(Moved(), None, None)
