"""The one view of a functional model's graph: its calls in order, what
reads a tensor, what made it. `dead_units`' neighbours (`output_layers`,
`dropped_inputs`), `compact`'s analysis and its re-traced copy all ask it;
Keras' own private graph is read in `keras_regkit._keras.graph` only."""

from __future__ import annotations

import dataclasses

import keras

from keras_regkit._keras import graph as graph_fence
from keras_regkit._keras.layers import sublayers


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a layer in the graph: its input and output tensors
    (flattened), and whether it is a model input."""

    layer: keras.layers.Layer
    inputs: tuple
    outputs: tuple
    is_input: bool


@dataclasses.dataclass(frozen=True)
class Maker:
    """What made a tensor: the layer, the inputs of that call, and which
    of the call's outputs the tensor is."""

    layer: keras.layers.Layer
    inputs: tuple
    output_index: int | None


class Graph:
    """The call graph of a Functional model (a built Sequential's inner
    one, a subclassed Functional model's such as a KerasHub backbone's).

    Use `Graph.of(model)`, which gives None for a model without one (a
    subclassed model, a Sequential with no input shape)."""

    def __init__(self, functional):
        self.model = functional
        self.inputs = tuple(keras.tree.flatten(functional.inputs))
        self.outputs = tuple(keras.tree.flatten(functional.outputs))
        self.calls = tuple(
            Call(node.operation, tuple(keras.tree.flatten(node.input_tensors)),
                 tuple(keras.tree.flatten(node.output_tensors)),
                 node.is_input or isinstance(node.operation, keras.layers.InputLayer))
            for node in graph_fence.nodes_in_call_order(functional)
        )
        self._times_called: dict[int, int] = {}
        for call in self.calls:
            self._times_called[id(call.layer)] = self._times_called.get(id(call.layer), 0) + 1

    @classmethod
    def of(cls, model) -> Graph | None:
        """The graph of `model`, or None when it has none."""
        if isinstance(model, keras.Sequential):
            model = graph_fence.sequential_graph(model)
        if model is None or not graph_fence.is_functional(model) or not model.inputs:
            return None
        return cls(model)

    def times_called(self, layer) -> int:
        """How many calls of `layer` the graph holds (a shared layer: more
        than one)."""
        return self._times_called.get(id(layer), 0)

    def readers(self, tensor) -> list[Call]:
        """The calls that read `tensor`."""
        return [call for call in self.calls if not call.is_input and any(t is tensor for t in call.inputs)]


def made_by(tensor) -> Maker | None:
    """The call that made symbolic `tensor` (in any graph: a nested model's
    output is made by the nested model), or None for a tensor no layer
    made."""
    history = graph_fence.tensor_history(tensor)
    if history is None:
        return None
    layer, node_index, output_index = history
    node = graph_fence.inbound_nodes(layer)[node_index]
    return Maker(layer, tuple(keras.tree.flatten(node.input_tensors)), output_index)


def as_functional(model):
    """`model` as a Functional model: a built Sequential's own inner one
    (the same layers), any other model as it is. `keras.models.clone_model`
    takes a `call_function` for Functional models only."""
    if isinstance(model, keras.Sequential):
        return graph_fence.sequential_graph(model) or model
    return model


# How many names of one prefix a caller of `reserve_names` may build before
# a taken number further on could be reached.
_REACH = 1 << 16


def reserve_names(model) -> None:
    """Makes the names Keras gives new layers and operations skip those
    already in `model` (nested models included).

    A model loaded from a file keeps its names (e.g. "get_item" for a
    slice) without Keras counting them, so in a new process the next slice
    built is named "get_item" too, and a graph holding both is refused
    ("The name "get_item" is used 2 times in the model"). Call this before
    building new operations into a copy of `model`'s graph."""
    names = set()
    for layer in sublayers(model, recursive=True, include_self=True):
        names.add(layer.name)
        if graph_fence.is_functional(layer):
            names.update(operation.name for operation in layer.operations)
    # Keras numbers a prefix's names "prefix", "prefix_1", ... from a
    # counter that only counts up: move each prefix's past the numbers taken
    # that it could reach (a name like "run_20240101" is out of reach).
    taken: dict[str, set] = {}
    for name in names:
        taken.setdefault(name, set()).add(0)
        prefix, _, number = name.rpartition("_")
        if prefix and number.isascii() and number.isdigit():
            taken.setdefault(prefix, set()).add(int(number))
    for prefix, numbers in taken.items():
        next_number = keras.backend.get_uid(prefix)  # the number Keras gives the prefix's next name
        highest_reachable = max((n for n in numbers if n < next_number + _REACH), default=-1)
        while next_number <= highest_reachable:
            next_number = keras.backend.get_uid(prefix)
