"""What a cut removes one by one: the granularities, as objects.

`get("weight" | "unit" | "head" | "block" | "N:M")` parses the string once, at the
call that received it; the object then answers every question the cut and
the shrink ask of it: which weights it covers (`select`), how it ranks them
(`rank`), what it zeroes (`zero`), what is already dead (`dead`), how far
it can go (`ceiling`), and the shrink's first cut and tolerance levels.

- `Weights`: entries, ranked globally over every covered weight;
- `Units`: whole output units and filters (see `units`), and the heads of
  any attention layer the selection meets;
- `Heads`: attention heads only;
- `Blocks` (`keras_regkit.pruning.blocks`): whole residual blocks
  (KerasHub transformer layers, plain-Keras residual branches);
- `NM(n, m)`: at most `n` non-zeros in every group of `m` inputs (of a
  unit kernel, or along an `EinsumDense` kernel's innermost input axis).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import keras
import numpy as np

from keras_regkit import weights as weights_lib
from keras_regkit.pruning import linear_layers
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import select
from keras_regkit.pruning import units as units_lib

# The tolerance mode's candidate levels: the climb stops at each, the
# validation check tests it, and the first that fails ends the climb at the
# one before. Few, fixed looks: the labels pick among 7 states, not
# hundreds (which would keep the ones that held there by chance). The
# entries' levels start above their first cut (half the entries), which is
# not checked on its own.
ENTRY_LEVELS = (0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
UNIT_LEVELS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def values(ref: weights_lib.WeightRef) -> np.ndarray:
    """The weight's entries, to read at once (see `select.host_view`)."""
    return select.host_view(ref.variable.value)


def zero(ref: weights_lib.WeightRef, kept: np.ndarray) -> None:
    """Zeroes the entries of `ref` where `kept` is False."""
    select.zero([ref.variable], [np.logical_not(kept)])


class Granularity:
    """What a cut removes one by one.

    Attributes:
        name: As a string (`"weight"`, `"unit"`, `"head"`, `"2:4"`).
        weights: The weight kinds it covers (`"kernel"` by default).
        ceiling: The highest sparsity it can reach.
        first_cut: The shrink's one-shot first cut.
        levels: The tolerance mode's candidate levels.
        top_level: The tolerance mode's default last level.
    """

    name: str
    ceiling = 1.0
    first_cut = 0.0
    levels = ENTRY_LEVELS
    top_level = 0.995

    def __init__(self, weights: Union[str, Sequence[str]] = "kernel"):
        self.weights = weights_lib.normalize_kinds(weights)
        self.weights_given = weights  # as the user wrote it, for messages

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={list(self.weights)!r})"

    def select(self, model: keras.Model, layers) -> list[weights_lib.WeightRef]:
        """The weights a cut acts on."""
        return weights_lib.select_weights(model, layers, self.weights)

    def rank(self, refs: list, scores: list[np.ndarray]) -> list[np.ndarray]:
        """One array of scores per cut item (entries of each weight, or
        units of each group), what is already dead first (-1), what must
        stay out of reach (+inf)."""
        return [np.where(values(ref) == 0, -1.0, score).astype("float64") for ref, score in zip(refs, scores)]

    def zero(self, refs: list, chosen: list[np.ndarray]) -> None:
        """Zeroes what `chosen` (shaped as `rank`'s arrays) marks."""
        for ref, removed in zip(refs, chosen):
            if removed.any():
                select.zero([ref.variable], [removed])

    def dead(self, refs: list) -> list[np.ndarray]:
        """Per cut item, whether it is dead (shaped as `rank`'s arrays)."""
        return [values(ref) == 0 for ref in refs]

    def count_dead(self, refs: list) -> tuple[int, int]:
        """Dead items of `refs`, and how many there are."""
        if type(self).dead is Granularity.dead:  # entries: no boolean array per weight (`select.count_zeros`)
            return select.count_zeros([ref.variable for ref in refs])
        dead = self.dead(refs)
        return sum(int(d.sum()) for d in dead), sum(d.size for d in dead)


class Weights(Granularity):
    """Entries, ranked together over every covered weight."""

    name = "weight"
    first_cut = 0.5  # half the entries did best on the benchmark's MLPs (0.8 and 0: 0.5-2 points worse)


class NM(Granularity):
    """At most `n` non-zeros in every group of `m` consecutive inputs of
    each kernel: `1 - n/m` is its ceiling, reached from 0 through cuts that
    keep every group's `n` best."""

    def __init__(self, n: int, m: int, weights: Union[str, Sequence[str]] = "kernel"):
        _check_n_below_m(n, m, "granularity")
        super().__init__(weights)
        self.n, self.m = n, m
        self.name = f"{n}:{m}"
        self.ceiling = self.top_level = 1.0 - n / m

    def __repr__(self) -> str:
        return f"NM({self.n}, {self.m}, weights={list(self.weights)!r})"

    @staticmethod
    def input_axis(layer, variable) -> int | None:
        """The axis of `variable` that N:M groups lie along: a unit
        kernel's input channels, or an `EinsumDense` kernel's contracted
        axis that its inputs hold innermost (the hidden axis of an attention
        layer's query, key and value; the head dimension of its output
        projection); None for any other weight."""
        axis = units_lib.input_axis(layer, variable)
        if axis is None and variable is getattr(layer, "kernel", None):
            return linear_layers.einsum_input_axis(layer)
        return axis

    def select(self, model, layers):
        refs = super().select(model, layers)
        for ref in refs:
            axis = self.input_axis(ref.layer, ref.variable)
            if axis is None:
                raise ValueError(
                    f"granularity={self.name!r} groups the inputs of a unit kernel (a Dense or Conv "
                    f"'kernel', a DepthwiseConv 'depthwise_kernel', a SeparableConv 'pointwise_kernel') or of an "
                    f"EinsumDense 'kernel'; {ref.name!r} ({type(ref.layer).__name__} {ref.kind}) is not one. "
                    "Select other layers or weights.")
            if ref.variable.shape[axis] % self.m:
                raise ValueError(
                    f"granularity={self.name!r} needs the input axis of every kernel to split into groups "
                    f"of {self.m}: {ref.name!r} has {ref.variable.shape[axis]} inputs (axis {axis} of shape "
                    f"{tuple(ref.variable.shape)}). Leave it out with `layers=`, or choose an M that divides it.")
        return refs

    def groups(self, array: np.ndarray, axis: int) -> np.ndarray:
        """`array` with the input axis last, split into groups of `m`:
        shape (..., groups, m)."""
        moved = np.moveaxis(array, axis, -1)
        return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // self.m, self.m))

    def rank(self, refs, scores):
        # The N best of every group out of reach: no group keeps fewer than N.
        ranked = []
        for ref, entries in zip(refs, super().rank(refs, scores)):
            axis = self.input_axis(ref.layer, ref.variable)
            grouped = self.groups(entries, axis)
            best = np.argsort(-grouped, axis=-1, kind="stable")[..., :self.n]
            np.put_along_axis(grouped, best, np.inf, axis=-1)
            ranked.append(np.moveaxis(grouped.reshape(grouped.shape[:-2] + (-1,)), -1, axis))
        return ranked

    def satisfied_by(self, array: np.ndarray, axis: int) -> bool:
        """Whether `array` has at most N non-zeros in every group of M along
        `axis`."""
        if array.shape[axis] % self.m:
            return False
        return bool((np.count_nonzero(self.groups(array, axis), axis=-1) <= self.n).all())


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """The units of one layer, as the cut sees them: `parts` are `(index
    into refs, axis)` of every selected weight with one slice per unit (a
    unit kernel alone, units on its trailing axes: `axis` None; an
    attention layer's head parts, heads on `axis`; or a unit kernel and the
    depthwise kernel that reads its units one to one, channels on `axis`,
    see `units.channel_source`); `deciding` is the index of the weight
    whose zero slices make a unit dead (None: a unit is dead when its
    slices of every part are)."""

    parts: tuple
    deciding: int
    heads: bool


class Units(Granularity):
    """Whole output units and filters, and the heads of every attention
    layer the selection meets; never those of the layers that produce the
    model's outputs. A unit that a depthwise convolution reads one to one
    (a MobileNet's expansion unit, and its channel of the depthwise layer
    after it) is one unit with that channel: scored on both (each part
    against its own layer), cut and counted together, the depthwise kernel
    joining the selection, so that `compact` removes the pair."""

    name = "unit"
    levels = UNIT_LEVELS
    top_level = 0.95

    def select(self, model, layers):
        refs = super().select(model, layers)
        is_head_part = [units_lib.head_axis(ref.layer, ref.variable, ref.parent) is not None for ref in refs]
        refs, is_head_part = self._heads_only(model, layers, refs, is_head_part)
        without_units = [ref for ref, part in zip(refs, is_head_part)
                         if not part and not units_lib.is_unit_kernel(ref.layer, ref.variable)]
        if without_units:
            raise ValueError(self._without_units_message(layers, without_units))
        # The output projection decides whether a head is dead: a selection
        # that cuts the query of a head but leaves its output would kill nothing.
        attention = {id(ref.parent): ref.parent for ref, part in zip(refs, is_head_part) if part}
        selected = {id(ref.variable) for ref in refs}
        partial = sorted(layer.name for layer in attention.values()
                         if id(units_lib.head_kernel(layer)) not in selected)
        if partial:
            raise ValueError(
                f"Cutting whole heads of attention layers {partial} needs their output projection's kernel "
                "selected too (a head is dead when its slice of it is zero). Select the attention layer "
                f"as a whole (its name or class) with weights='kernel'. Received: layers={layers!r}")
        if all(is_head_part):
            return refs  # heads never change a layer's output width
        outputs = units_lib.output_layers(model)
        if outputs is None:
            raise ValueError(
                f"granularity='unit' must leave the layers that produce the outputs whole, and "
                f"subclassed model '{model.name}' does not say which they are. Use a Functional or "
                "Sequential model.")
        refs = [ref for ref in refs if all(ref.layer is not out for out in outputs)]
        if not refs:
            raise ValueError(
                f"granularity='unit': the selected layers all produce model outputs "
                f"({[layer.name for layer in outputs]}), whose units cannot be removed. Select hidden layers.")
        return refs + self._depthwise_readers(model, refs, outputs)

    @staticmethod
    def _depthwise_readers(model, refs, outputs) -> list:
        """The depthwise kernels left out of `refs` that read the units of
        a layer in it one to one: each of its channels is cut with the unit
        it reads (see `unit_groups`)."""
        layers = {id(ref.layer) for ref in refs}
        chosen = {id(ref.variable) for ref in refs}
        readers = []
        for ref in weights_lib.iter_weights(model, "depthwise_kernel"):
            source = units_lib.channel_source(ref.layer)
            if (source is not None and id(source) in layers and id(ref.variable) not in chosen
                    and all(ref.layer is not out for out in outputs)):
                readers.append(ref)
        return readers

    def _heads_only(self, model, layers, refs, is_head_part):
        return refs, is_head_part

    def _without_units_message(self, layers, refs) -> str:
        """What the selection holds that has neither units nor heads, where
        it sits, and what to do instead."""
        described, in_attention = [], False
        for ref in refs:
            where = f"{type(ref.layer).__name__} {ref.kind}"
            if ref.parent is not None and units_lib.is_head_layer(ref.parent):
                in_attention = True
                where += f" inside attention layer '{ref.parent.name}', part of no head, such as a gate"
            described.append(f"{ref.name!r} ({where})")
        selection = (f"layers={layers!r}{' (the default)' if layers == '*' else ''}, weights="
                     f"{self.weights_given!r}{' (the default)' if self.weights_given == 'kernel' else ''}")
        return (
            f"granularity={self.name!r} removes whole units (the unit kernels of "
            f"{[cls.__name__ for cls in units_lib.UNIT_LAYERS]}: a Dense or Conv 'kernel', a SeparableConv "
            "'pointwise_kernel', a DepthwiseConv 'depthwise_kernel') and whole attention heads (the query, key, "
            "value and output kernels of a MultiHeadAttention, and the query, key and value biases). The "
            f"selection ({selection}) also holds weights that are neither: {', '.join(described)}. Leave their "
            "layers out with `layers=` (a name glob, a class or a callable; a layer inside an attention layer "
            "goes with it)" + (", or cut attention heads alone with granularity='head'." if in_attention else "."))

    def unit_groups(self, refs: list) -> list[UnitGroup]:
        groups, by_attention = [], {}
        readers = self._channel_readers(refs)
        read = {j for js in readers.values() for j in js}
        for i, ref in enumerate(refs):
            if i in read:
                continue  # a depthwise kernel: in the group of the units it reads
            if i in readers:  # their input channels on the last axis but one
                parts = ((i, None),) + tuple((j, len(refs[j].variable.shape) - 2) for j in readers[i])
                groups.append(UnitGroup(parts, None, False))
                continue
            axis = units_lib.head_axis(ref.layer, ref.variable, ref.parent)
            if axis is None:
                groups.append(UnitGroup(((i, None),), i, False))
                continue
            parts, deciding = by_attention.setdefault(id(ref.parent), ([], []))
            parts.append((i, axis))
            if ref.variable is units_lib.head_kernel(ref.parent):
                deciding.append(i)
        for parts, deciding in by_attention.values():
            groups.append(UnitGroup(tuple(parts), deciding[0], True))
        return groups

    @staticmethod
    def _channel_readers(refs: list) -> dict[int, list[int]]:
        """Index of a unit kernel -> indices of the depthwise kernels that
        read its units one to one, all in `refs`."""
        kernels = {id(ref.layer): i for i, ref in enumerate(refs) if units_lib.is_unit_kernel(ref.layer, ref.variable)
                   and units_lib.head_axis(ref.layer, ref.variable, ref.parent) is None}
        readers = {}
        for j, ref in enumerate(refs):
            source = units_lib.channel_source(ref.layer) if units_lib.is_unit_kernel(ref.layer, ref.variable) else None
            if source is not None and id(source) in kernels:
                readers.setdefault(kernels[id(source)], []).append(j)
        return readers

    @staticmethod
    def _columns(array: np.ndarray, ref, axis) -> np.ndarray:
        """`array` (a part's shape) with one column per unit."""
        if axis is None:
            return units_lib.per_unit(array, units_lib.unit_axes(ref.layer))
        return units_lib.per_head(array, axis)

    def _dead_units(self, group: UnitGroup, refs) -> np.ndarray:
        deciding = group.parts if group.deciding is None else [(group.deciding, dict(group.parts)[group.deciding])]
        return np.logical_and.reduce(
            [(self._columns(values(refs[i]), refs[i], axis) == 0).all(axis=0) for i, axis in deciding])

    def rank(self, refs, scores):
        """One score per unit (see `scores.unit_scores`), what is already
        dead first. An attention layer may lose its every head: `compact`
        then writes it as its output bias (added to the residual around it),
        exactly."""
        ranked = []
        for group in self.unit_groups(refs):
            columns = [self._columns(scores[i], refs[i], axis) for i, axis in group.parts]
            if group.heads:
                score = scores_lib.unit_scores(columns)
            else:  # a unit kernel, and the depthwise kernel reading it: each part against its own layer
                score = np.mean([scores_lib.unit_scores([part]) for part in columns], axis=0)
            ranked.append(np.where(self._dead_units(group, refs), -1.0, score).astype("float64"))
        return ranked

    def zero(self, refs, chosen):
        for group, removed in zip(self.unit_groups(refs), chosen):
            if not removed.any():
                continue
            for i, axis in group.parts:
                shape = tuple(refs[i].variable.shape)
                # The unit mask as it broadcasts over the weight (`select.zero`).
                if axis is None:
                    removed_entries = removed.reshape(shape[-units_lib.unit_axes(refs[i].layer):])
                else:
                    along = [1] * len(shape)
                    along[axis] = removed.size
                    removed_entries = removed.reshape(along)
                select.zero([refs[i].variable], [removed_entries])

    def dead(self, refs):
        return [self._dead_units(group, refs) for group in self.unit_groups(refs)]


class Heads(Units):
    """Attention heads only (see `Units`)."""

    name = "head"

    def _heads_only(self, model, layers, refs, is_head_part):
        refs = [ref for ref, part in zip(refs, is_head_part) if part]
        if not refs:
            raise ValueError(
                "granularity='head' removes whole attention heads, and the selection has no attention "
                f"layer ({[cls.__name__ for cls in units_lib.HEAD_LAYERS]}, as inside KerasHub's "
                "TransformerEncoder/TransformerDecoder) with a query, key, value or output kernel. Received: "
                f"layers={layers!r}, weights={self.weights_given!r} on model '{model.name}'. Use "
                "granularity='unit' for Dense and Conv units.")
        return refs, [True] * len(refs)


_NAMED = {"weight": Weights, "unit": Units, "head": Heads}


def _check_n_below_m(n: int, m: int, argument: str) -> None:
    if not 1 <= n < m:
        raise ValueError(
            f"Invalid value for argument `{argument}`: in 'N:M', N must be at least 1 and below M "
            f"(keep N of every M). Received: {argument}='{n}:{m}'")


def _split_nm(spec) -> tuple[int, int] | None:
    """`(n, m)` of an `"N:M"` string, or None for anything else."""
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def get(granularity, weights: Union[str, Sequence[str]] = "kernel") -> Granularity:
    """A `Granularity` from its string (`"weight"`, `"unit"`, `"head"` or
    `"N:M"`, e.g. `"2:4"`) covering the weight kinds `weights`, or the
    object itself."""
    if isinstance(granularity, Granularity):
        return granularity
    if isinstance(granularity, str) and granularity in _NAMED:
        return _NAMED[granularity](weights)
    if granularity == "block":
        from keras_regkit.pruning import blocks  # which subclasses Granularity

        return blocks.Blocks(weights)
    split = _split_nm(granularity)
    if split is not None:
        return NM(*split, weights)
    raise ValueError(
        "Invalid value for argument `granularity`: expected 'weight', 'unit', 'head', 'block' or 'N:M' (e.g. "
        "'2:4'), "
        f"or a keras_regkit.pruning.Granularity. Received: granularity={granularity!r}")


def pattern(spec) -> NM:
    """The N:M pattern `spec` names (`"2:4"`, or an `NM`), as the `pattern=`
    argument of the sparsity report and monitor takes it: its errors name
    `pattern`."""
    if isinstance(spec, NM):
        return spec
    split = _split_nm(spec)
    if split is None:
        raise ValueError(
            "Invalid value for argument `pattern`: expected 'N:M' (e.g. '2:4': at most N non-zeros in every "
            f"group of M inputs). Received: pattern={spec!r}")
    _check_n_below_m(*split, "pattern")
    return NM(*split)
