"""Rewrites of the ONNX graph tf2onnx writes for a Keras model, so that the
file holds each weight once and ONNX Runtime runs a transformer's layer
norms, residual additions and GELUs as its fused kernels.

- **Shapes of constants.** tf2onnx decomposes an `EinsumDense` (the
  attention projections) into a reshape of the kernel for the matrix
  product and, for the output shape, `Shape` of the kernel unsqueezed; its
  constant folding then stores the unsqueezed kernel as one more
  initializer, read only for its shape. On a 2-layer BERT (hidden 64) that
  was 6 of 8 attention kernels stored twice. `Shape` of a constant is
  replaced by the shape itself, and initializers no node reads are dropped.
- **Layer norms.** Keras' `LayerNormalization` reaches ONNX as 12 element-wise
  ops around two `GlobalAveragePool`s (tf2onnx's form of the mean over the
  last axis); they become one `LayerNormalization` (opset 17). ONNX
  Runtime's own fusions match only that form, and its int8 quantizer fails
  on the pools ("QLinearGlobalAveragePool parameter out of computation
  range").
"""

from __future__ import annotations

import numpy as np

# `LayerNormalization` is an ONNX op from this opset on.
LAYER_NORM_OPSET = 17


def unconverted_ops(graph) -> dict:
    """The ops of the standard domain that ONNX does not define (tf2onnx
    leaves a TensorFlow op it cannot convert in the graph, and logs it):
    `{op type: the first node's name}`."""
    from onnx import defs

    found = {}
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and not defs.has(node.op_type):
            found.setdefault(node.op_type, node.name)
    return found


def fold_constant_shapes(graph) -> int:
    """Replaces each `Shape` of an initializer with an initializer holding
    that shape. Returns how many were replaced."""
    from onnx import numpy_helper

    dims = {i.name: list(i.dims) for i in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        if node.op_type != "Shape" or node.input[0] not in dims:
            kept.append(node)
            continue
        attributes = {a.name: a.i for a in node.attribute}
        shape = dims[node.input[0]][attributes.get("start", 0):attributes.get("end")]
        graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), node.output[0]))
        folded += 1
    _set_nodes(graph, kept)
    return folded


def drop_unused_initializers(graph) -> int:
    """Removes the initializers no node (nor subgraph, nor output) reads.
    Returns how many were removed."""
    read = _read_names(graph) | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    dropped = len(graph.initializer) - len(kept)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return dropped


def fuse_layer_norms(graph) -> int:
    """Replaces tf2onnx's form of Keras' layer norm over the last axis with
    `LayerNormalization` nodes (the model's opset must be at least 17).
    Returns how many were replaced."""
    from onnx import helper, numpy_helper

    constants = {i.name: i for i in graph.initializer}
    # One list of the nodes' objects: `id` names a node only within it.
    nodes_in_order = list(graph.node)
    readers = {}
    for node in nodes_in_order:
        for name in dict.fromkeys(node.input):  # `Mul(d, d)` reads `d` once
            readers.setdefault(name, []).append(node)
    removed, added = set(), {}
    for node in nodes_in_order:
        if node.op_type != "GlobalAveragePool" or id(node) in removed:
            continue
        match = _match_layer_norm(node, readers, constants)
        if match is None:
            continue
        nodes, x, gamma, beta, epsilon, output = match
        scale, offset = numpy_helper.to_array(constants[gamma]), numpy_helper.to_array(constants[beta])
        if scale.ndim < 1 or offset.shape != scale.shape or any(d != 1 for d in scale.shape[:-1]):
            continue
        names = (f"{node.name}_layer_norm_scale", f"{node.name}_layer_norm_bias")
        graph.initializer.extend(numpy_helper.from_array(a.reshape(-1), n) for a, n in zip((scale, offset), names))
        # axis 2: GlobalAveragePool averages over all axes from 2 on.
        added[id(nodes[-1])] = helper.make_node("LayerNormalization", [x, *names], [output],
                                                name=f"{node.name}_layer_norm", axis=2, epsilon=epsilon)
        removed.update(id(n) for n in nodes)
    if not added:
        return 0
    # Each fused node takes the place of the pattern's last node: the graph stays topologically sorted.
    _set_nodes(graph, [added.get(id(n), n) for n in nodes_in_order if id(n) not in removed or id(n) in added])
    drop_unused_initializers(graph)
    return len(added)


def _match_layer_norm(mean, readers, constants):
    """The nodes of `x*m + (-mean*m + beta)`, `m = gamma / sqrt(var + eps)`,
    `var = GAP((x - mean)^2)`, from the first pool `mean` on: (nodes, x,
    gamma, beta, epsilon, output), or None where the graph differs."""
    x = mean.input[0]

    def only(name, op_type, count=1):
        found = [n for n in readers.get(name, []) if n.op_type == op_type]
        return found if len(found) == count and len(readers.get(name, [])) == count else None

    def other(node, name):
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    mean_readers = readers.get(mean.output[0], [])
    neg = [n for n in mean_readers if n.op_type == "Neg"]
    sub = [n for n in mean_readers if n.op_type == "Sub" and list(n.input) == [x, mean.output[0]]]
    if len(mean_readers) != 2 or len(neg) != 1 or len(sub) != 1:
        return None
    square = only(sub[0].output[0], "Mul")
    if square is None or list(square[0].input) != [sub[0].output[0]] * 2:
        return None
    variance = only(square[0].output[0], "GlobalAveragePool")
    add_eps = variance and only(variance[0].output[0], "Add")
    sqrt = add_eps and only(add_eps[0].output[0], "Sqrt")
    reciprocal = sqrt and only(sqrt[0].output[0], "Reciprocal")
    times_gamma = reciprocal and only(reciprocal[0].output[0], "Mul")
    if not times_gamma:
        return None
    epsilon, gamma = other(add_eps[0], variance[0].output[0]), other(times_gamma[0], reciprocal[0].output[0])
    if epsilon not in constants or gamma not in constants:
        return None
    scaled = only(times_gamma[0].output[0], "Mul", 2)
    if scaled is None:
        return None
    x_scaled = [n for n in scaled if set(n.input) == {x, times_gamma[0].output[0]}]
    mean_scaled = [n for n in scaled if set(n.input) == {neg[0].output[0], times_gamma[0].output[0]}]
    if len(x_scaled) != 1 or len(mean_scaled) != 1 or len(readers.get(neg[0].output[0], [])) != 1:
        return None
    add_beta = only(mean_scaled[0].output[0], "Add")
    beta = add_beta and other(add_beta[0], mean_scaled[0].output[0])
    if beta not in constants:
        return None
    total = only(add_beta[0].output[0], "Add")
    if total is None or set(total[0].input) != {x_scaled[0].output[0], add_beta[0].output[0]} or \
            len(readers.get(x_scaled[0].output[0], [])) != 1:
        return None
    from onnx import numpy_helper

    eps = numpy_helper.to_array(constants[epsilon])
    if eps.size != 1:
        return None
    nodes = [mean, neg[0], sub[0], square[0], variance[0], add_eps[0], sqrt[0], reciprocal[0], times_gamma[0],
             x_scaled[0], mean_scaled[0], add_beta[0], total[0]]
    return nodes, x, gamma, beta, float(eps.reshape(())), total[0].output[0]


def _read_names(graph) -> set:
    """Every tensor name a node of `graph` or of its subgraphs reads."""
    from onnx import AttributeProto

    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                names |= _read_names(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    names |= _read_names(subgraph)
    return names


def _set_nodes(graph, nodes):
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
