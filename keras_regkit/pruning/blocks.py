"""Whole residual blocks: what a block is, when it is removed, how much
it does, and `granularity="block"`.

A block is a residual layer of a model's stream, removed as a whole:

- a KerasHub `TransformerEncoder` or `TransformerDecoder` (any layer whose
  registered kind names attention layers and a feed-forward block). It is
  removed when the output projection of every attention layer it holds and
  its feed-forward output layer are exactly zero, kernels and biases: each
  sublayer then adds exactly 0 to the stream, so a pre-norm block
  (`normalize_first=True`, as GPT-2's) computes `x`, and a post-norm block
  (BERT's) its layer norms of `x` alone (`LN_ff(LN_self(x))`), which
  `compact` keeps. The cut zeroes the query, key and value projections and
  the intermediate layer too, so every head and unit of the block counts as
  dead.
- in plain Keras, an `Add` of two tensors of which one (the stream) made the
  other (the branch), the branch ending in a layer with a kernel and a bias
  (`Dense`, `EinsumDense`, a convolution) whose activation maps 0 to 0 and
  which only this `Add` reads. It is removed when that last layer's kernel
  and bias are zero: the `Add` then passes the stream on, and `compact`
  drops the branch.

A block's score, on calibration data, is how far the model's outputs move
when that block alone is removed (`output_scores`, relative: `sqrt(Σ‖f -
f_without‖² / Σ‖f‖²)`); `block_scores` is the cheaper local one, how far
the block's own output moves (one pass for all blocks, but blind to how
later blocks amplify a change: on the benchmark's BERT it ranked the most
costly block lowest). Without data, the mean square of its weights' scores. The shrink's and `prune`'s sparsity
with `granularity="block"` is the share of blocks removed.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_regkit import layers as layers_lib
from keras_regkit import weights as weights_lib
from keras_regkit._keras import graph as graph_fence
from keras_regkit._keras.layers import sublayers
from keras_regkit.layers.graph import Graph, made_by
from keras_regkit.pruning import calibration
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import layer_inputs
from keras_regkit.pruning import units as units_lib

# KerasHub's layer norms of a post-norm block, in the order its call applies them.
POST_NORMS = ("self_attention_layer_norm", "cross_attention_layer_norm", "feedforward_layer_norm")
_CACHES = ("cache", "self_attention_cache", "cross_attention_cache")


@dataclasses.dataclass(frozen=True)
class Block:
    """One removable block.

    Attributes:
        layer: The transformer layer, or the `Add` that closes a residual
            block of plain Keras layers.
        path: Its path in the model (as `iter_layers` names it).
        last: The layers whose kernel and bias are zero when the block is
            removed (the attention output projections and the feed-forward
            output layer; a plain block's last branch layer).
        cleared: Every layer whose kernel and bias the cut zeroes.
        stream: For a plain block, which input of the `Add` is the stream;
            None for a transformer layer.
        width: The width of the residual stream (its last axis).
    """

    layer: keras.layers.Layer
    path: str
    last: tuple
    cleared: tuple
    stream: int | None
    width: int


def _transformer_block(path, layer, explicit: bool) -> Block | None:
    kind = layers_lib.kind_of(layer)
    if kind.attention is None or kind.feedforward is None or not layer.built:
        return None
    registered_class = layers_lib.registered(layer)[0][0]
    if type(layer).call is not registered_class.call:
        # A subclass's own `call` may do more than the sublayers whose zeros
        # remove the block, so neither the removed block's output nor its
        # bypass in `compact` would be known.
        if explicit:
            raise ValueError(
                f"granularity='block' cannot remove layer '{path}': its class {type(layer).__name__} subclasses "
                f"{registered_class.__name__} with a `call` of its own, so what the block computes once its "
                "sublayers are zero is not known. Register the class with "
                "`keras_regkit.layers.register` to make it a block, or select other layers with `layers=`.")
        return None
    by_name = {sub.name: sub for sub in sublayers(layer, recursive=False)}
    inner, outer = by_name.get(kind.feedforward.inner), by_name.get(kind.feedforward.outer)
    attentions = [sub for sub in kind.attention(layer).values() if units_lib.is_head_layer(sub)]
    if inner is None or outer is None or not attentions:
        return None
    heads = [units_lib.head_sublayers(sub) for sub in attentions]
    last = tuple(output for _, output in heads) + (outer,)
    cleared = tuple(p for projections, _ in heads for p in projections) + last + (inner,)
    for node in graph_fence.inbound_nodes(layer):
        cached = [name for name in _CACHES if node.arguments.kwargs.get(name) is not None]
        if cached:
            raise ValueError(
                f"granularity='block' cannot remove decoder '{path}': the model calls it with a cache "
                f"({cached}), whose entries a removed block would still have to fill. Build the model that "
                "reads whole sequences (e.g. the backbone, without a cache) and remove blocks there.")
    return Block(layer, path, last, cleared, None, int(outer.kernel.shape[-1]))


def _residual_block(path, layer, graph, explicit: bool) -> Block | None:
    """The residual block an `Add` closes, or None (an error if the user
    selected the `Add` by name, class or callable) when it closes none."""
    calls = [call for call in graph.calls if call.layer is layer] if graph is not None else []

    def refuse(why):
        if explicit:
            raise ValueError(
                f"granularity='block': layer '{path}' (Add) is not a residual block that can be removed: {why}. "
                "A plain-Keras block is an Add of a stream and a branch computed from it, the branch ending in "
                "a Dense, EinsumDense or convolution with a bias, whose activation maps 0 to 0, read only by "
                "the Add. Select other layers with `layers=`.")
        return None

    if len(calls) != 1 or len(calls[0].inputs) != 2:
        return refuse("it is not called once on two tensors")
    a, b = calls[0].inputs
    stream = 0 if _made_from(b, a) else 1 if _made_from(a, b) else None
    if stream is None:
        return refuse("neither input is computed from the other, so there is nothing to bypass")
    branch = made_by(calls[0].inputs[1 - stream])
    last = branch.layer
    kernel, bias = getattr(last, "kernel", None), getattr(last, "bias", None)
    if kernel is None or bias is None:
        return refuse(f"its branch ends in '{last.name}' ({type(last).__name__}), which has no kernel and bias "
                      "whose zeros would make the branch add exactly 0")
    activation = getattr(last, "activation", None)
    if activation is not None and np.any(ops.convert_to_numpy(activation(ops.zeros((1,)))) != 0):
        return refuse(f"its branch ends in '{last.name}', whose activation does not map 0 to 0")
    if graph.times_called(last) != 1 or len(graph.readers(calls[0].inputs[1 - stream])) != 1:
        return refuse(f"its branch's last layer '{last.name}' is also read elsewhere")
    return Block(layer, path, (last,), (last,), stream, int(calls[0].outputs[0].shape[-1]))


def _made_from(tensor, source) -> bool:
    """Whether symbolic `tensor` is computed from `source` (in one graph)."""
    seen, todo = set(), [tensor]
    while todo:
        current = todo.pop()
        if current is source:
            return True
        maker = made_by(current)
        if maker is None or id(current) in seen:
            continue
        seen.add(id(current))
        todo.extend(maker.inputs)
    return False


def find(model, selector="*", same_width: bool = True) -> list[Block]:
    """The blocks `selector` selects in `model` (a layer selector as in
    `apply_regularizers`; a block is selected when it or a layer holding it
    matches), in model order. With `"*"`, an `Add` that closes no removable
    block, or a subclass of a transformer layer with a `call` of its own, is
    passed over; selected by name, class or callable, it is refused.
    `same_width=False` lets blocks of different widths through (`compact`
    bypasses each removed block on its own).

    Raises:
        ValueError: For a selected `Add` that is no removable residual block,
            a decoder called with a cache, blocks of different widths, or a
            selection without blocks. Nothing is changed.
    """
    weights_lib.check_built(model)
    weights_lib.check_selector(selector)
    explicit = selector != "*"
    graphs = {}
    for layer in sublayers(model, recursive=True, include_self=True):
        graph = Graph.of(layer) if isinstance(layer, keras.Model) else None
        for call in graph.calls if graph is not None else ():
            graphs.setdefault(id(call.layer), graph)
    found = []
    for path, layer, ancestors in weights_lib.iter_layers(model):
        if not weights_lib.selects(selector, path, layer, ancestors):
            continue
        if any(id(block.layer) in {id(a) for a in ancestors} for block in found):
            continue  # inside a block already found
        block = _transformer_block(path, layer, explicit)
        if block is None and type(layer) is keras.layers.Add:
            block = _residual_block(path, layer, graphs.get(id(layer)), explicit)
        if block is not None:
            found.append(block)
    if not found:
        raise ValueError(
            f"granularity='block' found no block to remove in model '{model.name}' with layers={selector!r}: a "
            "block is a KerasHub TransformerEncoder/TransformerDecoder, or an Add closing a residual branch of "
            "plain Keras layers (see keras_regkit.pruning.blocks). Select layers that hold blocks.")
    widths = {block.path: block.width for block in found}
    if same_width and len(set(widths.values())) > 1:
        raise ValueError(
            f"granularity='block' ranks blocks of one residual stream against each other, and counts its "
            f"sparsity in blocks: the selected blocks differ in width ({widths}), so a share of blocks would "
            "not be a share of the stack. Select the blocks of one width with `layers=`.")
    return found


def _values(variable) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(variable))


def is_removed(block: Block) -> bool:
    """Whether `block` adds exactly nothing: its last layers' kernels and
    biases are all zero."""
    return all(not _values(v).any() for layer in block.last for v in (layer.kernel, layer.bias))


def removed_output(block: Block, inputs, norms=None):
    """What `block` computes once removed, from its inputs: the stream (a
    plain block, a pre-norm transformer layer), or the stream through the
    block's layer norms (a post-norm one). `norms` replaces them by name
    (`compact`'s copies)."""
    if block.stream is not None:
        return inputs[block.stream]
    if block.layer.get_config().get("normalize_first", False):
        return inputs
    by_name = {sub.name: sub for sub in sublayers(block.layer, recursive=False)}
    for name in POST_NORMS:
        norm = by_name.get(name)
        if norm is not None and norm.built:
            inputs = (norms or by_name)[name](inputs)
    return inputs


def _outputs(model, batch) -> list:
    return [ops.cast(t, "float32") for t in keras.tree.flatten(model(batch, training=False))]


def output_scores(model, blocks: list[Block], calibration_data, steps=None) -> np.ndarray:
    """Per block, `sqrt(Σ‖f - f_without‖² / Σ‖f‖²)` over `calibration_data`:
    how far the model's outputs `f` move when that block alone is removed
    (its call replaced by what it computes removed; no weight changes). One
    pass of the data per block, and one for the model as it is."""
    batches = list(calibration.batches(calibration_data, steps=steps))
    full = [_outputs(model, batch) for batch in batches]
    energy = sum(float(ops.convert_to_numpy(ops.sum(ops.square(t)))) for out in full for t in out)
    moved = np.zeros(len(blocks))
    for i, block in enumerate(blocks):
        def without(layer, call, inputs, *args, _block=block, **kwargs):
            return removed_output(_block, inputs)

        with calibration.wrapping_calls([block.layer], without):
            for batch, before in zip(batches, full):
                after = _outputs(model, batch)
                moved[i] += sum(float(ops.convert_to_numpy(ops.sum(ops.square(a - b)))) for a, b in zip(after, before))
    return np.sqrt(moved / max(energy, np.finfo("float64").tiny))


def block_scores(model, blocks: list[Block], calibration_data, steps=None) -> np.ndarray:
    """Per block, `sqrt(Σ‖y - y_removed‖² / Σ‖y‖²)` over `calibration_data`:
    how far its own output `y` moves from what it would compute removed
    (one pass for every block; blind to how later blocks amplify a change,
    which `output_scores` measures)."""
    moved, energy = np.zeros(len(blocks)), np.zeros(len(blocks))
    index = {id(block.layer): i for i, block in enumerate(blocks)}

    def measure(layer, call, inputs, *args, **kwargs):
        outputs = call(inputs, *args, **kwargs)
        i = index[id(layer)]
        kept = removed_output(blocks[i], inputs)
        moved[i] += float(ops.convert_to_numpy(ops.sum(ops.square(outputs - kept))))
        energy[i] += float(ops.convert_to_numpy(ops.sum(ops.square(outputs))))
        return outputs

    with calibration.wrapping_calls([block.layer for block in blocks], measure):
        for batch in calibration.batches(calibration_data, steps=steps):
            layer_inputs.run(model, batch)
    return np.sqrt(moved / np.maximum(energy, np.finfo("float64").tiny))


class Blocks(granularity_lib.Granularity):
    """Whole blocks (see `keras_regkit.pruning.blocks`): a cut removes the
    lowest-scored blocks, and sparsity is the share of blocks removed.

    Args:
        calibration_data: Optional unlabeled inputs (as `prune`'s): blocks
            are then scored by how far the model's outputs move when each
            alone is removed (`output_scores`: one pass of the data per
            block). Without it, by the mean square of their weights' scores
            (magnitude or curvature).
        calibration_steps: How many batches of `calibration_data` to read.
        weights: Ignored: a block is cut as its kernels and biases.
    """

    name = "block"
    levels = (0.25, 0.5, 0.75)
    top_level = 0.75

    def __init__(self, weights="kernel", calibration_data=None, calibration_steps=None):
        super().__init__(("kernel", "bias"))
        self.weights_given = weights
        self.calibration_data, self.calibration_steps = calibration_data, calibration_steps
        if calibration_data is not None:
            calibration.check_form(calibration_data)
        self.blocks: list[Block] = []
        self._model = None

    def select(self, model, layers):
        self.blocks, self._model = find(model, layers), model
        wanted = {id(layer) for block in self.blocks for layer in block.cleared}
        return [ref for ref in weights_lib.iter_weights(model, self.weights) if id(ref.layer) in wanted]

    def _members(self, refs) -> list[list[int]]:
        """Per block, the indices of its weights in `refs`."""
        of_layer = {id(layer): i for i, block in enumerate(self.blocks) for layer in block.cleared}
        members = [[] for _ in self.blocks]
        for j, ref in enumerate(refs):
            members[of_layer[id(ref.layer)]].append(j)
        return members

    def rank(self, refs, scores):
        if self.calibration_data is not None:
            score = output_scores(self._model, self.blocks, self.calibration_data, self.calibration_steps)
        else:
            score = np.array([np.mean(np.concatenate([np.square(scores[j]).reshape(-1) for j in members]))
                              for members in self._members(refs)])
        return [np.where(self.dead(refs)[0], -1.0, score).astype("float64")]

    def zero(self, refs, chosen):
        for removed, members in zip(chosen[0], self._members(refs)):
            if removed:
                for j in members:
                    granularity_lib.zero(refs[j], np.zeros(refs[j].variable.shape, bool))

    def dead(self, refs):
        return [np.array([is_removed(block) for block in self.blocks], dtype=bool)]
