"""The fence's reads of Keras layers (`keras_regkit._keras.layers`): each
runs on the installed Keras and, if an upgrade moved what it reads, fails
with the message that names the version it was written for."""

import keras
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import layers as fence

from conftest import fenced

L = keras.layers


call = fenced


def test_sublayers_walks_what_a_layer_tracks():
    inner = keras.Sequential([keras.Input((2,)), L.Dense(4, name="d1"), L.Dense(2, name="d2")], name="inner")
    rnn = L.LSTM(2, return_sequences=True, name="lstm")
    model = keras.Sequential([keras.Input((5, 3)), rnn, L.TimeDistributed(inner, name="td")])
    assert [layer.name for layer in call(fence.sublayers, model, recursive=False)][-2:] == ["lstm", "td"]
    names = [layer.name for layer in call(fence.sublayers, model)]
    assert {"lstm_cell", "inner", "d1", "d2"} <= set(names)  # an RNN's cell, a wrapper's layer
    assert call(fence.sublayers, rnn, include_self=True)[0] is rnn


def test_attention_projections_are_the_query_key_value_and_output_einsum_dense():
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3)
    x = keras.Input((4, 6))
    mha(x, x)
    (query, key, value), output = call(fence.attention_projections, mha)
    assert all(isinstance(sub, L.EinsumDense) for sub in (query, key, value, output))
    assert tuple(query.kernel.shape) == (6, 2, 3) and tuple(output.kernel.shape) == (2, 3, 6)


def test_a_moved_read_names_keras_and_the_version_it_was_written_for():
    class Moved:  # as a layer of a Keras release without the private names
        pass

    written = rf"written for keras {WRITTEN_FOR['keras']}.*has moved it"
    with pytest.raises(FenceError, match=rf"Layer\._flatten_layers.*{written}"):
        fence.sublayers(Moved())
    with pytest.raises(FenceError, match=rf"MultiHeadAttention\._query_dense.*{written}"):
        fence.attention_projections(Moved())


def test_argument_attribute_finds_what_multi_head_attention_keeps_private():
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3, kernel_regularizer="l2")
    assert call(fence.argument_attribute, mha, "kernel_regularizer") == "_kernel_regularizer"
    assert call(fence.argument_attribute, L.Dense(2), "kernel_regularizer") == "kernel_regularizer"


def test_a_moved_argument_attribute_names_keras_and_the_version_it_was_written_for():
    with pytest.raises(FenceError, match=rf"Dense\._no_such_argument.*written for keras {WRITTEN_FOR['keras']}"):
        fence.argument_attribute(L.Dense(2), "no_such_argument")
