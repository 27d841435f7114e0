"""Private reads of Keras' functional graph: its nodes, a tensor's history,
a layer's calls, a Sequential's inner graph and the Functional class."""

from __future__ import annotations

from keras_regkit._keras import moved


def functional_class() -> type:
    """The class Keras builds `keras.Model(inputs, outputs)` as
    (`keras.src.models.functional.Functional`); KerasHub's backbones
    subclass it."""
    try:
        from keras.src.models.functional import Functional
    except ImportError as error:
        raise moved("keras", "keras.src.models.functional.Functional", error) from None
    return Functional


def is_functional(model) -> bool:
    """Whether `model` is a Functional model, subclassed ones (a KerasHub
    backbone) included."""
    return isinstance(model, functional_class())


def is_plain_functional(model) -> bool:
    """Whether `model` is exactly `keras.Model(inputs, outputs)`, which a
    config rebuilds; a subclass may change how it is built."""
    return type(model) is functional_class()


def sequential_graph(model):
    """The Functional graph a built Sequential runs (`Sequential._functional`),
    or None while it has no input shape."""
    try:
        return model._functional
    except AttributeError as error:
        raise moved("keras", "Sequential._functional", error) from None


def nodes_in_call_order(model) -> list:
    """The nodes of Functional `model`, inputs first, each after the nodes
    it reads (`Functional._nodes_by_depth`, deepest first)."""
    try:
        by_depth = model._nodes_by_depth
    except AttributeError as error:
        raise moved("keras", "Functional._nodes_by_depth", error) from None
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def tensor_history(tensor):
    """`(operation, node_index, tensor_index)`: the call that made symbolic
    `tensor` (`KerasTensor._keras_history`), or None for a model input
    that no layer made (and for anything that is not a symbolic tensor)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    try:
        return history.operation, history.node_index, history.tensor_index
    except AttributeError as error:
        raise moved("keras", "KerasTensor._keras_history", error) from None


def inbound_nodes(layer) -> list:
    """The calls of `layer` on symbolic tensors (`Operation._inbound_nodes`),
    in every graph it is part of."""
    try:
        return list(layer._inbound_nodes)
    except AttributeError as error:
        raise moved("keras", "Operation._inbound_nodes", error) from None
