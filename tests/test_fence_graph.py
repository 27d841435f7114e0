"""The fence's reads of Keras' functional graph (`keras_regkit._keras.graph`):
each runs on the installed Keras and, if an upgrade moved what it reads,
fails with the message that names the version it was written for."""

import sys

import keras
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import graph as fence

from conftest import fenced

L = keras.layers


call = fenced


def functional():
    inputs = keras.Input((3,), name="x")
    hidden = L.Dense(4, name="h")(inputs)
    return keras.Model(inputs, L.Dense(2, name="out")(hidden))


class Subclassed(keras.Model):
    def call(self, x):
        return x


def test_functional_class_is_what_keras_model_builds_and_tells_subclasses_apart():
    model = functional()
    assert isinstance(model, call(fence.functional_class))
    assert call(fence.is_functional, model) and call(fence.is_plain_functional, model)
    assert not call(fence.is_functional, Subclassed()) and not call(fence.is_plain_functional, Subclassed())


def test_a_sequential_graph_is_its_inner_functional_model():
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")])
    graph = call(fence.sequential_graph, model)
    assert call(fence.is_plain_functional, graph) and [layer.name for layer in graph.layers][-1] == "d"
    assert call(fence.sequential_graph, keras.Sequential([L.Dense(2)])) is None  # no input shape yet


def test_nodes_come_in_call_order_and_tensors_know_their_call():
    model = functional()
    names = [node.operation.name for node in call(fence.nodes_in_call_order, model)]
    assert names == ["x", "h", "out"]
    layer, node_index, tensor_index = call(fence.tensor_history, model.outputs[0])
    assert layer.name == "out" and tensor_index == 0
    node = call(fence.inbound_nodes, layer)[node_index]
    assert node.input_tensors[0] is call(fence.inbound_nodes, model.get_layer("h"))[0].output_tensors[0]
    assert call(fence.tensor_history, 1.0) is None


def test_a_moved_read_names_keras_and_the_version_it_was_written_for(monkeypatch):
    class Moved:  # as an object of a Keras release without the private names
        pass

    written = rf"written for keras {WRITTEN_FOR['keras']}.*has moved it"
    for read, what in [(fence.sequential_graph, "Sequential._functional"),
                       (fence.nodes_in_call_order, "Functional._nodes_by_depth"),
                       (fence.inbound_nodes, "Operation._inbound_nodes")]:
        with pytest.raises(FenceError, match=rf"{what}.*{written}"):
            read(Moved())
    # The case: the module moves, and compact must say so instead of
    # calling every Functional model subclassed.
    model = functional()
    monkeypatch.setitem(sys.modules, "keras.src.models.functional", None)
    with pytest.raises(FenceError, match=rf"keras\.src\.models\.functional\.Functional.*{written}"):
        fence.is_plain_functional(model)
