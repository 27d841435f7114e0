"""What `compact` did: `CompactResult`."""

from __future__ import annotations

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class CompactResult:
    """What `compact` did.

    Attributes:
        model: The new, smaller model (uncompiled; the original is unchanged).
        units: Layer name -> `(units before, units after)`, for every layer
            with units (Dense, Conv, SeparableConv, DepthwiseConv), and
            `(heads before, heads after)` for attention layers.
        dead: Layer name -> dead units before compaction, same layers.
        kept: Layer name -> why some of its dead units were kept, for the
            layers where any were.
        skipped: Layer name -> why the layer was left as it is (its input and
            output channels all stay).
        params_before: Parameters of the original model.
        params_after: Parameters of the new model.
        removed_blocks: The paths of the blocks taken out whole (see
            `keras_regkit.pruning.blocks`), in model order.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)),
    ...     keras.layers.Dense(4, name="h"), keras.layers.Dense(1, name="out")])
    >>> _ = model.get_layer("h").kernel.assign(np.zeros((3, 4), "float32"))
    >>> result = rk.compact(model)
    >>> result.units, result.params_before, result.params_after
    ({'h': (4, 1), 'out': (1, 1)}, 21, 6)
    """

    model: keras.Model
    units: dict[str, tuple[int, int]]
    dead: dict[str, int]
    kept: dict[str, str]
    skipped: dict[str, str]
    params_before: int
    params_after: int
    removed_blocks: tuple = ()

    @property
    def removed(self) -> int:
        """Units removed, over all layers."""
        return sum(before - after for before, after in self.units.values())

    def __str__(self) -> str:
        rows = [("layer", "units", "dead", "after", "note")]
        for name, (before, after) in self.units.items():
            rows.append((name, str(before), str(self.dead[name]), str(after),
                         self.kept.get(name, self.skipped.get(name, ""))))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:])]
                      + ([row[4]] if row[4] else [])).rstrip()
            for row in rows
        ]
        if self.removed_blocks:
            lines.append(f"removed blocks: {', '.join(self.removed_blocks)}")
        others = {n: r for n, r in self.skipped.items() if n not in self.units}
        if others:
            lines.append("skipped: " + "; ".join(f"{n} ({r})" for n, r in others.items()))
        change = self.params_after - self.params_before
        percent = 100.0 * change / self.params_before if self.params_before else 0.0
        lines.append(
            f"params: {self.params_before:,} -> {self.params_after:,} ({percent:+.1f}%)"
        )
        return "\n".join(lines)
