"""The one cut: how many of the lowest-ranked entries (or units) go.

Every covered weight (or unit) is ranked together by its score, so layers
with many unimportant weights give up more of them than layers with few
(the shrink benchmark found that 8 points better at 98 % than equal
per-layer sparsity); Wanda compares within each output unit instead
(`per_output`). What is already dead ranks first, so a cut never regrows a
zero and each cut of the shrink builds on the last. What is ranked, and
what a removed item zeroes, is the granularity's (`granularity`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from keras import ops

from keras_regkit.pruning import scores as scores_lib
from keras_regkit.pruning import select
from keras_regkit.pruning import units as units_lib
from keras_regkit.pruning.granularity import Granularity
from keras_regkit.weights import WeightRef


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


def cut(
    refs: list[WeightRef],
    scores: list,
    granularity: Granularity,
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
    compares. An `NM` granularity keeps the N best of every group of M
    inputs whatever the sparsity, so a cut to `1 - N/M` is the pattern
    exactly, and lower cuts are steps towards it. `scores` are entry
    scores, one of each weight's shape: NumPy arrays (cut on the host), or
    tensors (`Score.tensors`), which a granularity of entries cuts globally
    on the weights' device (`select`), with the same masks; or a score to
    compute on the host (`scores.OnHost`), of the live entries only where
    the cut is a global one of entries to a sparsity."""
    entries_globally = _ranks_entries(granularity) and not per_output
    if isinstance(scores, scores_lib.OnHost):
        if entries_globally and threshold is None:
            made = _lowest_live_entries(refs, scores.at, sparsity)
            if made is not None:
                return made
        scores = scores.all()
    elif not isinstance(scores[0] if scores else None, np.ndarray):
        if entries_globally:
            return _cut_on_device(refs, scores, sparsity, threshold)
        scores = [np.asarray(ops.convert_to_numpy(ops.cast(s, "float32"))) for s in scores]
    elif entries_globally and threshold is None:
        made = _lowest_live_entries(refs, lambda positions: scores_lib.read_at(scores, positions), sparsity)
        if made is not None:
            return made
    ranked = granularity.rank(refs, scores)
    total = sum(r.size for r in ranked)
    if per_output:
        chosen = [_chosen_per_output(r, ref, sparsity, threshold) for r, ref in zip(ranked, refs)]
        count = sum(int(np.count_nonzero(c)) for c in chosen)
        highest = max((float(r[c].max()) for r, c in zip(ranked, chosen) if c.any()), default=None)
    else:
        chosen, count, highest = _chosen_globally(ranked, sparsity, threshold)
    if count == 0:
        return Cut(0, total, None)
    granularity.zero(refs, chosen)
    return Cut(count, total, max(highest, 0.0))


def _ranks_entries(granularity: Granularity) -> bool:
    """Whether `granularity` ranks and zeroes entries as the base class does
    (`Weights`): those the device cut makes."""
    kind = type(granularity)
    return kind.rank is Granularity.rank and kind.zero is Granularity.zero


def _cut_on_device(refs: list[WeightRef], scores: list, sparsity, threshold) -> Cut:
    keys = select.entry_keys([ref.variable.value for ref in refs], scores)
    total = sum(int(np.prod(ref.variable.shape)) for ref in refs)
    if threshold is not None:
        chosen, count, highest = select.at_or_below(keys, threshold)
    else:
        chosen, count, highest = select.lowest(keys, sparsity)
    if chosen is not None:
        select.zero([ref.variable for ref in refs], chosen)
    return Cut(count, total, highest)


def _lowest_live_entries(refs: list[WeightRef], scores_at, sparsity: float) -> Cut | None:
    """The global cut of entries to `sparsity`, as `granularity.rank` and
    `lowest_by_position` make it (dead first, then the lowest scores, ties
    by position, nothing out of reach) but scoring and ranking only the
    live entries: a shrink's later cuts find most entries dead, and passes
    over every entry (scores, their copies, masks) cost 2-4 train steps a
    cut at 5 M parameters. `scores_at(positions)` gives the scores of the
    entries at those flat positions (None: every entry), per weight (None:
    only every entry's scores can decide). None where a live entry scores
    below 0, -inf included (a `Score` of your own): the general path ranks
    those below the dead."""
    positions = [_live_positions(ref.variable) for ref in refs]
    sizes = [int(np.prod(ref.variable.shape)) for ref in refs]
    live_scores = scores_at(positions) if refs else []
    if live_scores is None:
        return None
    reachable = np.concatenate([_reachable(s) for s in live_scores]) if refs else np.zeros(0)
    if reachable.size and reachable.min() < 0:
        return None
    total = sum(sizes)
    dead = total - sum(size if live is None else live.size for live, size in zip(positions, sizes))
    count = min(max(int(round(sparsity * total)), dead), dead + reachable.size)
    if count == 0:
        return Cut(0, total, None)
    if count == dead:  # nothing live goes: the dead rank at -1, the threshold is 0
        return Cut(count, total, 0.0)
    # `reachable` is the cut's own array (a concatenation): it may be
    # reordered in place, and is only counted after this.
    kth = _kth_lowest(reachable, count - dead, overwrite=True)
    ties_left = count - dead - int(np.count_nonzero(reachable < kth))
    removed = []
    for live, score in zip(positions, live_scores):
        chosen = score.reshape(-1) < kth  # a score of your own may keep a dense weight's shape
        if ties_left:
            tied = np.flatnonzero(score.reshape(-1) == kth)[:ties_left]
            chosen[tied] = True
            ties_left -= tied.size
        removed.append(chosen if live is None else np.compress(chosen, live))
    select.zero_at([ref.variable for ref in refs], removed)
    return Cut(count, total, max(float(kth), 0.0))


def _live_positions(variable) -> np.ndarray | None:
    """The flat positions of `variable`'s entries that are not exact
    zeros, in order; None when no entry is an exact zero (a dense weight's
    first cut needs no index of all its entries)."""
    # Read, not copied; and no read is held once the zeroing writes (TensorFlow would copy the weight first).
    alive = select.host_view(variable.value).reshape(-1) != 0
    return None if alive.all() else np.flatnonzero(alive)


def _reachable(scores: np.ndarray) -> np.ndarray:
    """The scores not out of reach: all but NaN and +inf (-inf stays, and
    sends the cut to the general path, as any score below 0 does)."""
    if not scores.size or scores.max() < np.inf:  # a reduction, no mask (NaN's max is NaN)
        return scores
    return scores[scores < np.inf]


def _chosen_globally(ranked: list[np.ndarray], sparsity, threshold) -> tuple[list[np.ndarray], int, float | None]:
    """Per weight, the mask of what goes; how many go; the highest ranked
    value among them (None when none does)."""
    flat = np.concatenate([r.reshape(-1) for r in ranked])
    if threshold is not None:
        chosen = flat <= threshold
        count = int(np.count_nonzero(chosen))
        highest = float(flat[chosen].max()) if count else None
    else:
        count = max(int(round(sparsity * flat.size)), int(np.count_nonzero(flat < 0)))
        count = min(count, int(np.count_nonzero(np.isfinite(flat))))  # never a pattern's N best
        chosen, highest = _lowest_and_kth(flat, count)
    pieces = np.split(chosen, np.cumsum([r.size for r in ranked])[:-1])
    return [piece.reshape(r.shape) for piece, r in zip(pieces, ranked)], count, highest


def lowest_by_position(flat: np.ndarray, count: int) -> np.ndarray:
    """A mask of the `count` lowest entries of `flat`: all those below the
    `count`-th lowest value, then the first ones (by position) of those equal
    to it, so that exactly `count` are chosen however many tie."""
    return _lowest_and_kth(flat, count)[0]


def _lowest_and_kth(flat: np.ndarray, count: int) -> tuple[np.ndarray, float | None]:
    """`lowest_by_position`'s mask, and the `count`-th lowest value: the
    highest chosen (None when `count` is 0)."""
    if count <= 0:
        return np.zeros(flat.size, dtype=bool), None
    kth = _kth_lowest(flat, count)
    chosen = flat < kth
    tied = np.flatnonzero(flat == kth)
    chosen[tied[:count - int(np.count_nonzero(chosen))]] = True
    return chosen, float(kth)


def _kth_lowest(flat: np.ndarray, count: int, overwrite: bool = False):
    """The `count`-th lowest value of `flat` (1-based). `overwrite`: `flat`
    is the caller's own to reorder (no copy of it is partitioned)."""
    # `np.partition` finds it in linear time, but slows down where the k-th
    # falls in or near a large block of equal values (5.27 M entries, 4 ms
    # apart from that: 30x slower with 85 % of them at the dead's -1, 3x with
    # 5 % tied just below the k-th, 1.3x with 1 %), which a shrink's later
    # cuts ranking every entry are. So where the block at the lowest value
    # holds over 1 % of the array, or +inf is there, those are set apart and
    # only the rest is partitioned; else the whole array is, without that copy
    # of the rest (24 ms a cut at 20 M live scores). (With a NaN the minimum
    # is NaN: the whole array is partitioned, NaN last.) Which of the tied
    # entries a partition puts first is unspecified: the caller picks them by
    # position.
    lowest = flat.min()
    at_lowest = int(np.count_nonzero(flat == lowest))
    if count <= at_lowest:
        return lowest
    if at_lowest <= flat.size // 100 and flat.max() < np.inf:
        return _partitioned_at(flat, count - 1, overwrite)
    rest = flat[(flat > lowest) & (flat < np.inf)]
    if count - at_lowest > rest.size:  # the count reaches into what is out of reach
        return _partitioned_at(flat, count - 1, overwrite)
    return _partitioned_at(rest, count - at_lowest - 1, True)  # `rest` is a copy of its own


def _partitioned_at(values: np.ndarray, index: int, overwrite: bool):
    """`values`' entry at `index` once sorted: partitioned in place where
    `overwrite`, else in a copy. A large copy is fresh memory, faulted in
    page by page (a 20 M-parameter shrink under TensorFlow on 2 CPU cores:
    its 12 cuts' order statistics took 0.32-0.34 s with a copy each,
    0.10 s in place)."""
    if not overwrite:
        values = values.copy()
    values.partition(index)
    return values[index]


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


