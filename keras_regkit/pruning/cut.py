"""The one cut: what is pruned, and how many.

Four granularities: `"weight"` (entries), `"unit"` (whole units, see
`units`: attention heads included where the selection meets an attention
layer), `"head"` (attention heads only) and `"N:M"` (at most N non-zeros in
every group of M inputs).
Every covered weight (or unit) is ranked together by its score, so layers
with many unimportant weights give up more of them than layers with few
(the shrink benchmark found that 8 points better at 98 % than equal
per-layer sparsity); Wanda compares within each output unit instead
(`per_output`). What is already dead ranks first, so a cut never regrows a
zero and each cut of the shrink builds on the last.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import keras
import numpy as np
from keras import ops

from keras_regkit import weights as weights_lib
from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import units as units_lib
from keras_regkit.weights import LayerSelector, WeightRef

GRANULARITIES = ("weight", "unit", "head")


def pattern(granularity: str) -> tuple[int, int] | None:
    """`(n, m)` for an `"N:M"` granularity (at most N non-zeros in every
    group of M consecutive inputs), None for `"weight"`, `"unit"` and
    `"head"`; raises `ValueError` for anything else."""
    if granularity in GRANULARITIES:
        return None
    parts = granularity.split(":") if isinstance(granularity, str) else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 1 <= n < m:
            return n, m
        raise ValueError(
            f"Invalid value for argument `granularity`: in 'N:M', N must be at least 1 and below M "
            f"(keep N of every M). Received: granularity={granularity!r}"
        )
    raise ValueError(
        "Invalid value for argument `granularity`: expected 'weight', 'unit', 'head' or 'N:M' (e.g. '2:4'). "
        f"Received: granularity={granularity!r}"
    )


def pattern_sparsity(granularity: str) -> float | None:
    """The sparsity an `"N:M"` pattern makes, `1 - N/M` (None otherwise)."""
    nm = pattern(granularity)
    return None if nm is None else 1.0 - nm[0] / nm[1]


def _groups(values: np.ndarray, axis: int, m: int) -> np.ndarray:
    """`values` with the input axis last, split into groups of `m`:
    shape (..., groups, m)."""
    moved = np.moveaxis(values, axis, -1)
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def _ungroup(grouped: np.ndarray, axis: int) -> np.ndarray:
    merged = grouped.reshape(grouped.shape[:-2] + (-1,))
    return np.moveaxis(merged, -1, axis)


def satisfies(values: np.ndarray, axis: int, granularity: str) -> bool:
    """Whether `values` has at most N non-zeros in every group of M along
    `axis`."""
    n, m = pattern(granularity)
    if values.shape[axis] % m:
        return False
    return bool((np.count_nonzero(_groups(values, axis, m), axis=-1) <= n).all())


@dataclasses.dataclass(frozen=True)
class Cut:
    """What a cut left: `zeros` of `total` entries (or units) are exact
    zeros; `threshold` is the highest score cut (None if nothing was)."""

    zeros: int
    total: int
    threshold: float | None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


def select(
    model: keras.Model,
    layers: LayerSelector,
    weights: Union[str, Sequence[str]],
    granularity: str,
) -> list[WeightRef]:
    """The weights a cut acts on: the selection, and for unit granularity
    only unit kernels, never those of the layers that produce the outputs."""
    nm = pattern(granularity)
    refs = weights_lib.select_weights(model, layers, weights)
    if granularity == "weight":
        return refs
    if nm is not None:
        for ref in refs:
            axis = units_lib.input_axis(ref.layer, ref.variable)
            if axis is None:
                raise ValueError(
                    f"granularity={granularity!r} groups the inputs of a unit kernel (a Dense or Conv "
                    f"'kernel', a DepthwiseConv 'depthwise_kernel', a SeparableConv 'pointwise_kernel'); "
                    f"{ref.name!r} ({type(ref.layer).__name__} {ref.kind}) is not one. Select other layers or weights."
                )
            if ref.variable.shape[axis] % nm[1]:
                raise ValueError(
                    f"granularity={granularity!r} needs the input axis of every kernel to split into groups "
                    f"of {nm[1]}: {ref.name!r} has {ref.variable.shape[axis]} inputs (axis {axis} of shape "
                    f"{tuple(ref.variable.shape)}). Leave it out with `layers=`, or choose an M that divides it."
                )
        return refs
    is_head_part = [units_lib.head_axis(ref.layer, ref.variable, ref.parent) is not None for ref in refs]
    if granularity == "head":
        refs = [ref for ref, part in zip(refs, is_head_part) if part]
        if not refs:
            raise ValueError(
                "granularity='head' removes whole attention heads, and the selection has no attention "
                f"layer ({[cls.__name__ for cls in units_lib.HEAD_LAYERS]}, as inside KerasHub's "
                f"TransformerEncoder/TransformerDecoder) with a query, key, value or output kernel. Received: "
                f"layers={layers!r}, weights={weights!r} on model '{model.name}'. Use granularity='unit' "
                "for Dense and Conv units.")
        is_head_part = [True] * len(refs)
    without_units = sorted({ref.name for ref, part in zip(refs, is_head_part)
                            if not part and not units_lib.is_unit_kernel(ref.layer, ref.variable)})
    if without_units:
        raise ValueError(
            "granularity='unit' removes whole units, which only the unit kernels of "
            f"{[cls.__name__ for cls in units_lib.UNIT_LAYERS]} have (a Dense or Conv "
            "'kernel', a SeparableConv 'pointwise_kernel', a DepthwiseConv "
            "'depthwise_kernel'), and whole attention heads (the query, key, value and output "
            "kernels of a MultiHeadAttention, and the query, key and value biases). "
            f"Received: weights={weights!r}, which selects {without_units}"
        )
    # The output projection decides whether a head is dead: a selection
    # that cuts the query of a head but leaves its output would kill nothing.
    attention = {id(ref.parent): ref.parent for ref, part in zip(refs, is_head_part) if part}
    selected = {id(ref.variable) for ref in refs}
    partial = sorted(layer.name for layer in attention.values() if id(units_lib.head_kernel(layer)) not in selected)
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
            f"granularity='unit' must leave the layers that produce the "
            f"outputs whole, and subclassed model '{model.name}' does not say "
            "which they are. Use a Functional or Sequential model."
        )
    refs = [ref for ref in refs if all(ref.layer is not out for out in outputs)]
    if not refs:
        raise ValueError(
            f"granularity='unit': the selected layers all produce model "
            f"outputs ({[layer.name for layer in outputs]}), whose units "
            "cannot be removed. Select hidden layers."
        )
    return refs


def check_finite(refs: list[WeightRef]) -> None:
    """Refuses weights with NaN or inf entries, before anything is cut."""
    # A NaN compares False with any threshold, so it would be cut and counted
    # as a zero made: a diverged model would pass for a pruned one.
    nonfinite = [ops.sum(ops.cast(ops.logical_not(ops.isfinite(ref.variable.value)), "int32")) for ref in refs]
    counts = ops.convert_to_numpy(ops.stack(nonfinite))  # one host transfer
    bad = {ref.name: int(n) for ref, n in zip(refs, counts) if n}
    if bad:
        raise ValueError(
            f"Cannot prune weights that hold NaN or inf entries (counts per weight: {bad}): "
            "their magnitudes have no order, and cutting them would hide a diverged model "
            "as a sparse one. Restore finite weights first (e.g. from a checkpoint)."
        )


def _values(ref: WeightRef) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(ref.variable.value))


def _level(granularity: str) -> str:
    """What the cut removes one by one: entries, or units (heads too)."""
    return "unit" if granularity in ("unit", "head") else "weight"


@dataclasses.dataclass(frozen=True)
class _Units:
    """The units of one layer, as the cut sees them: `parts` are `(index
    into refs, axis)` of every selected weight with one slice per unit (a
    unit kernel alone, units on its trailing axes: `axis` None; or an
    attention layer's head parts, heads on `axis`); `deciding` is the index
    of the weight whose zero slices make a unit dead."""

    parts: tuple
    deciding: int
    heads: bool


def _unit_groups(refs: list[WeightRef]) -> list[_Units]:
    groups, by_attention = [], {}
    for i, ref in enumerate(refs):
        axis = units_lib.head_axis(ref.layer, ref.variable, ref.parent)
        if axis is None:
            groups.append(_Units(((i, None),), i, False))
            continue
        parts, deciding = by_attention.setdefault(id(ref.parent), ([], []))
        parts.append((i, axis))
        if ref.variable is units_lib.head_kernel(ref.parent):
            deciding.append(i)
    for parts, deciding in by_attention.values():
        groups.append(_Units(tuple(parts), deciding[0], True))
    return groups


def _columns(values: np.ndarray, ref: WeightRef, axis) -> np.ndarray:
    """`values` (a part's shape) with one column per unit."""
    return units_lib.per_unit(values, units_lib.unit_axes(ref.layer)) if axis is None else units_lib.per_head(values, axis)


def _dead_units(group: _Units, refs: list[WeightRef]) -> np.ndarray:
    i = group.deciding
    axis = dict(group.parts)[i]
    return (_columns(_values(refs[i]), refs[i], axis) == 0).all(axis=0)


def _ranked_units(group: _Units, refs: list[WeightRef], scores: list[np.ndarray]) -> np.ndarray:
    """One score per unit of `group` (see `scores.unit_scores`), with what
    is already dead first and, for heads, the layer's best head out of
    reach: no attention layer is cut to zero heads (compact could not
    bypass it exactly: its output bias and the residual around it stay)."""
    score = scores_lib.unit_scores([_columns(scores[i], refs[i], axis) for i, axis in group.parts])
    ranked = np.where(_dead_units(group, refs), -1.0, score).astype("float64")
    if group.heads:
        ranked[np.argmax(ranked)] = np.inf
    return ranked


def _ranked(ref: WeightRef, score: np.ndarray, granularity: str) -> np.ndarray:
    """The entry scores the cut ranks (the kernel's shape), with what is
    already dead first and, for an N:M pattern, the N best of every group
    out of reach (so no group ever keeps fewer than N)."""
    ranked = np.where(_values(ref) == 0, -1.0, score).astype("float64")
    nm = pattern(granularity)
    if nm is not None:
        axis = units_lib.input_axis(ref.layer, ref.variable)
        grouped = _groups(ranked, axis, nm[1])
        best = np.argsort(-grouped, axis=-1, kind="stable")[..., :nm[0]]
        np.put_along_axis(grouped, best, np.inf, axis=-1)
        ranked = _ungroup(grouped, axis)
    return ranked


def cut(
    refs: list[WeightRef],
    scores: list[np.ndarray],
    granularity: str = "weight",
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    per_output: bool = False,
) -> Cut:
    """Zeroes the lowest-scoring entries (or units) of `refs`: exactly
    `round(sparsity * total)` of them (ties broken by position, so the
    sparsity asked for is the sparsity reached), or every one scored at or
    below `threshold`. Give one of the two. What was zero stays zero.

    The ranking is global over every weight in `refs`; with `per_output`
    (entries only) each output unit loses its own share instead, as Wanda
    compares. An `"N:M"` granularity keeps the N best of every group of M
    inputs whatever the sparsity, so a cut to `1 - N/M` is the pattern
    exactly, and lower cuts are steps towards it. `scores` are entry
    scores, one array of each weight's shape."""
    if _level(granularity) == "unit":
        groups = _unit_groups(refs)
        ranked = [_ranked_units(group, refs, scores) for group in groups]
    else:
        ranked = [_ranked(ref, score, granularity) for ref, score in zip(refs, scores)]
    if per_output:
        chosen = [_chosen_per_output(r, ref, sparsity, threshold) for r, ref in zip(ranked, refs)]
    else:
        chosen = _chosen_globally(ranked, sparsity, threshold)
    count = sum(int(c.sum()) for c in chosen)
    total = sum(r.size for r in ranked)
    if count == 0:
        return Cut(0, total, None)
    highest = max(float(r[c].max()) for r, c in zip(ranked, chosen) if c.any())
    if _level(granularity) == "weight":
        for ref, removed in zip(refs, chosen):
            if removed.any():
                _zero(ref, ~removed)
        return Cut(count, total, max(highest, 0.0))
    for group, removed in zip(groups, chosen):
        if not removed.any():
            continue
        for i, axis in group.parts:
            shape = tuple(refs[i].variable.shape)
            if axis is None:
                kept = np.broadcast_to(~removed, (int(np.prod(shape[:-units_lib.unit_axes(refs[i].layer)])), removed.size))
                _zero(refs[i], kept.reshape(shape))
            else:
                along = [1] * len(shape)
                along[axis] = removed.size
                _zero(refs[i], np.broadcast_to((~removed).reshape(along), shape))
    return Cut(count, total, max(highest, 0.0))


def _zero(ref: WeightRef, kept: np.ndarray) -> None:
    value = ref.variable.value
    ref.variable.assign(ops.where(kept, value, ops.zeros_like(value)))


def _chosen_globally(ranked: list[np.ndarray], sparsity, threshold) -> list[np.ndarray]:
    flat = np.concatenate([r.reshape(-1) for r in ranked])
    if threshold is not None:
        chosen = flat <= threshold
    else:
        count = max(int(round(sparsity * flat.size)), int(np.count_nonzero(flat < 0)))
        count = min(count, int(np.count_nonzero(np.isfinite(flat))))  # never a pattern's N best
        chosen = np.zeros(flat.size, dtype=bool)
        if count:
            chosen[np.argpartition(flat, count - 1)[:count]] = True
    pieces = np.split(chosen, np.cumsum([r.size for r in ranked])[:-1])
    return [piece.reshape(r.shape) for piece, r in zip(pieces, ranked)]


def _chosen_per_output(ranked: np.ndarray, ref: WeightRef, sparsity, threshold) -> np.ndarray:
    """Each output unit's own lowest entries: its share of `sparsity`."""
    columns = units_lib.per_unit(ranked, units_lib.unit_axes(ref.layer))
    if threshold is not None:
        chosen = columns <= threshold
    else:
        count = np.maximum(int(round(sparsity * columns.shape[0])), np.count_nonzero(columns < 0, axis=0))
        count = np.minimum(count, np.count_nonzero(np.isfinite(columns), axis=0))
        order = np.argsort(columns, axis=0, kind="stable")
        chosen = np.zeros(columns.shape, dtype=bool)
        np.put_along_axis(chosen, order, np.arange(columns.shape[0])[:, None] < count[None, :], axis=0)
    return chosen.reshape(ranked.shape)


def count_dead(refs: list[WeightRef], granularity: str = "weight") -> tuple[int, int]:
    """Dead entries (or units and heads) of `refs`, and how many there are."""
    if _level(granularity) == "unit":
        dead = [_dead_units(group, refs) for group in _unit_groups(refs)]
    else:
        dead = [_values(ref) == 0 for ref in refs]
    return sum(int(d.sum()) for d in dead), sum(d.size for d in dead)
