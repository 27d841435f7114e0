"""Weight statistics computed on the device: the one place every report,
monitor and command reads from.

`WeightStats` reduces every selected weight to a handful of numbers. Where
the weights live on an accelerator it does so inside one compiled function
(under TensorFlow and JAX; eager under PyTorch) and brings them to the host in
one small transfer, so no weight is ever copied. Where they already live in
host memory (a CPU-only machine) it reads them in place with NumPy, in fewer
passes than a hand-written `get_weights()` scan.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import units as units_lib

# Counts are summed as int32 and shipped in float32, which is exact only below
# 2**24; splitting each count into (count // 2**20, count % 2**20) keeps it exact.
_SPLIT = 2**20
_COLUMNS = ("zeros_hi", "zeros_lo", "near_hi", "near_lo", "bad_hi", "bad_lo", "l1", "l2sq")


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics of one weight (or, for the model total, of all of them).

    Attributes:
        name: `path` for kernels, `path/kind` for other weights, `"total"`.
        params: Number of entries.
        zeros: Entries exactly 0.
        near_zero: Entries with `|w| <= threshold` (zeros included).
        l1: Sum of `|w|` over finite entries.
        l2: `sqrt(sum(w ** 2))` over finite entries.
        nonfinite: NaN and inf entries.
        regularizer: The attached regularizer's repr, or `None`.
        pattern_ok: With a `pattern` asked for (e.g. `"2:4"`), whether the
            weight has at most N non-zeros in every group of M inputs; None
            when not asked for, or for a weight without an input axis.

    Example:

    >>> stats = rk.stats.LayerStats("dense", params=10, zeros=4, near_zero=5, l1=1.0,
    ...     l2=0.5, nonfinite=0)
    >>> stats.sparsity, stats.near_zero_fraction
    (0.4, 0.5)
    """

    name: str
    params: int
    zeros: int
    near_zero: int
    l1: float
    l2: float
    nonfinite: int
    regularizer: str | None = None
    pattern_ok: bool | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros."""
        return self.zeros / self.params if self.params else 0.0

    @property
    def near_zero_fraction(self) -> float:
        return self.near_zero / self.params if self.params else 0.0


class WeightStats:
    """Computes `LayerStats` for a fixed set of weights, on the device.

    Args:
        model: The model to watch.
        weights: Weight kinds to cover: a kind, a list of kinds, or `"all"`.
            Defaults to `"kernel"`, the weights penalties act on by default.
        threshold: Near-zero threshold, >= 0. Defaults to 1e-3.
        relative: If False (default), near-zero means `|w| <= threshold`. If
            True, `|w| <= threshold * rms(w)` with the RMS of that weight, so
            layers of different scales compare fairly.
        pattern: Optional `"N:M"` (e.g. `"2:4"`) whose layout each kernel's
            `pattern_ok` reports.

    Raises:
        TypeError, ValueError: For an unknown weight kind, a bad threshold
            or `relative` (True or False only), a model that is not built
            yet, or a model with no weight of the requested kinds.
    """

    def __init__(
        self,
        model: keras.Model,
        weights: Union[str, Sequence[str]] = "kernel",
        threshold: float = 1e-3,
        relative: bool = False,
        pattern: str | None = None,
    ):
        self.threshold = _validate.real("threshold", threshold)
        self.relative = _validate.boolean("relative", relative)
        self.nm = None if pattern is None else granularity_lib.pattern(pattern)  # validated once
        self.pattern = None if self.nm is None else self.nm.name  # as a string, however given
        self.refs = list(weights_lib.iter_weights(model, weights))
        if not self.refs:
            weights_lib.check_built(model)
            raise ValueError(
                f"Model '{model.name}' has no weight of kind "
                f"{list(weights_lib.normalize_kinds(weights))} to report on."
            )

    def compute(self) -> list[LayerStats]:
        """Statistics of every weight, in model order."""
        values = [ref.variable.value for ref in self.refs]
        if all(_on_host(v) for v in values):
            return self._compute_on_host(values)
        return self._compute_on_device(values)

    def _compute_on_device(self, values) -> list[LayerStats]:
        # One compiled function, one small transfer of the results.
        table = _summarize(values, self.threshold, self.relative)
        table = np.asarray(ops.convert_to_numpy(table), dtype="float64")
        rows = []
        for row in table:
            row = dict(zip(_COLUMNS, row))
            rows.append(
                (
                    int(row["zeros_hi"] * _SPLIT + row["zeros_lo"]),
                    int(row["near_hi"] * _SPLIT + row["near_lo"]),
                    float(row["l1"]),
                    float(row["l2sq"]),
                    int(row["bad_hi"] * _SPLIT + row["bad_lo"]),
                )
            )
        return self._layer_stats(rows)

    def _compute_on_host(self, values) -> list[LayerStats]:
        rows = [_host_row(w, self.threshold, self.relative) for w in _host_arrays(values)]
        return self._layer_stats(rows)

    def _pattern_ok(self, ref) -> bool | None:
        axis = None if self.pattern is None else self.nm.input_axis(ref.layer, ref.variable)
        if axis is None:
            return None
        return self.nm.satisfied_by(np.asarray(ops.convert_to_numpy(ref.variable.value)), axis)

    def _layer_stats(self, rows) -> list[LayerStats]:
        out = []
        for ref, (zeros, near_zero, l1, l2sq, nonfinite) in zip(self.refs, rows):
            regularizer = ref.regularizer
            out.append(
                LayerStats(
                    name=ref.name,
                    params=int(np.prod(ref.variable.shape)),
                    zeros=zeros,
                    near_zero=near_zero,
                    l1=l1,
                    l2=math.sqrt(l2sq),
                    nonfinite=nonfinite,
                    regularizer=None if regularizer is None else repr(regularizer),
                    pattern_ok=self._pattern_ok(ref),
                )
            )
        return out


def total(layers: Sequence[LayerStats]) -> LayerStats:
    """The whole-model row: counts and L1 add up, L2 combines in quadrature,
    the pattern holds if it holds for every weight it applies to."""
    patterns = [s.pattern_ok for s in layers if s.pattern_ok is not None]
    return LayerStats(
        name="total",
        params=sum(s.params for s in layers),
        zeros=sum(s.zeros for s in layers),
        near_zero=sum(s.near_zero for s in layers),
        l1=sum(s.l1 for s in layers),
        l2=math.sqrt(sum(s.l2**2 for s in layers)),
        nonfinite=sum(s.nonfinite for s in layers),
        pattern_ok=all(patterns) if patterns else None,
    )


def _on_host(value) -> bool:
    """Whether a backend tensor lives in host memory."""
    if callable(getattr(value, "devices", None)):  # JAX
        return all(device.platform == "cpu" for device in value.devices())
    # TensorFlow: '/job:localhost/replica:0/task:0/device:CPU:0'; PyTorch: 'cpu'.
    return "cpu" in str(getattr(value, "device", "")).lower()


def _host_arrays(values):
    """NumPy views of host-memory tensors (no copy where the backend allows)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        # NumPy has no bfloat16 of PyTorch's: that one converts (a copy).
        return [
            (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
            for v in values
        ]
    if backend == "tensorflow":
        import tensorflow as tf

        # A variable read on the CPU shares its buffer; `np.asarray` of the
        # tensor is a view (a variable's own `numpy()` copies).
        values = [tf.convert_to_tensor(v) for v in values]
    return [np.asarray(v) for v in values]


def _host_row(w, threshold, relative):
    """`(zeros, near_zero, l1, l2sq, nonfinite)` of a host array, in about
    four passes (a naive scan takes a dozen)."""
    if w.dtype not in (np.float32, np.float64):
        w = w.astype("float32")  # float16/bfloat16: sums in float32
    flat = w.reshape(-1)
    nonzero = np.count_nonzero(flat)  # NaN and inf count as non-zero
    magnitude = np.abs(flat)
    l1 = float(magnitude.sum())
    l2sq = float(np.dot(flat, flat))
    nonfinite = 0
    if not (math.isfinite(l1) and math.isfinite(l2sq)):
        # Rare: only then mask the non-finite entries out of the norms.
        finite = np.isfinite(flat)
        nonfinite = flat.size - int(np.count_nonzero(finite))
        magnitude = np.where(finite, magnitude, 0.0)
        l1 = float(magnitude.sum())
        l2sq = float(np.dot(magnitude, magnitude))
    limit = threshold * math.sqrt(l2sq / flat.size) if relative and flat.size else threshold
    # Masked non-finite entries became 0: not near-zeros.
    near_zero = int(np.count_nonzero(magnitude <= limit)) - nonfinite
    return int(flat.size - nonzero), near_zero, l1, l2sq, nonfinite


def _summary_table(values, threshold, relative):
    """One row of `_COLUMNS` per weight value."""
    return ops.stack([_summary_row(ops.cast(w, "float32"), threshold, relative) for w in values])


def _summary_row(w, threshold, relative):
    l1 = ops.sum(ops.absolute(w))
    # Non-finite entries are rare: the cheap pass (4 reductions) serves
    # whenever the L1 sum is finite; only otherwise mask them out.
    return ops.cond(
        ops.isfinite(l1),
        lambda: _row(w, ops.absolute(w), l1, 0, threshold, relative),
        lambda: _masked_row(w, threshold, relative),
    )


def _masked_row(w, threshold, relative):
    finite = ops.isfinite(w)
    w = ops.where(finite, w, 0.0)
    magnitude = ops.absolute(w)
    return _row(w, magnitude, ops.sum(magnitude), ops.size(finite) - _count(finite), threshold, relative)


def _row(w, magnitude, l1, nonfinite, threshold, relative):
    limit = threshold * ops.sqrt(ops.mean(ops.square(w))) if relative else threshold
    counts = [
        _count(w == 0) - nonfinite,  # NaN and inf were masked to 0: not zeros
        _count(magnitude <= limit) - nonfinite,  # masked ones became 0
        nonfinite,
    ]
    split = []
    for count in counts:
        split += [count // _SPLIT, count % _SPLIT]
    return ops.concatenate(
        [ops.cast(ops.stack(split), "float32"), ops.stack([l1, ops.sum(ops.square(w))])]
    )


def _count(mask):
    return ops.sum(ops.cast(mask, "int32"))


def _compile(fn):
    # One compiled function replaces dozens of eager ops. It takes the weight
    # values as inputs, so every model with the same weight shapes shares one
    # trace. (TensorFlow's XLA was measured slower here on CPU.) PyTorch runs
    # it eagerly: torch.compile would cost more than it saves.
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn, static_argnums=2)  # `relative` chooses the graph
    return fn


_summarize = _compile(_summary_table)


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-weight statistics of a model plus the total; `str()` is a table.

    Attributes:
        layers: One `LayerStats` per weight, in model order.
        total: The whole-model `LayerStats`.
        threshold: The near-zero threshold used.
        relative: Whether the threshold was relative to each weight's RMS.
        pattern: The `"N:M"` checked (a column of the table), or None.
        dropped_inputs: Feature selection: for each model input read only by
            `Dense` layers, `(dropped, features)`: the indices (last axis) of
            the input features whose every outgoing weight is exactly 0, and
            how many features it has (see
            `keras_regkit.pruning.units.dropped_inputs`). None where the
            model has no functional graph.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(2, kernel_initializer="zeros", name="d")])
    >>> report = rk.sparsity_report(model)
    >>> [(s.name, s.params, s.zeros) for s in report.layers]
    [('d', 8, 8)]
    >>> print(str(report).splitlines()[0])
    weight  params   zeros  |w|<=0.001   L1   L2  nonfinite  regularizer
    """

    layers: list[LayerStats]
    total: LayerStats
    threshold: float
    relative: bool
    pattern: str | None = None
    dropped_inputs: dict[str, tuple[list[int], int]] | None = None

    @classmethod
    def from_layers(cls, layers: Sequence[LayerStats], threshold: float, relative: bool, pattern=None,
                    dropped_inputs=None):
        return cls(list(layers), total(layers), float(threshold), bool(relative), pattern, dropped_inputs)

    def to_dict(self) -> dict:
        """A JSON-ready dict (used by `keras-regkit inspect --json`)."""

        def row(s):
            return {**dataclasses.asdict(s), "sparsity": s.sparsity, "near_zero_fraction": s.near_zero_fraction}

        return {
            "threshold": self.threshold,
            "relative": self.relative,
            "pattern": self.pattern,
            "layers": [row(s) for s in self.layers],
            "total": row(self.total),
            "dropped_inputs": None if self.dropped_inputs is None else {
                name: {"dropped": list(dropped), "features": features}
                for name, (dropped, features) in self.dropped_inputs.items()
            },
        }

    def __str__(self) -> str:
        near = f"|w|<={self.threshold:g}" + ("·rms" if self.relative else "")
        header = ("weight", "params", "zeros", near, "L1", "L2", "nonfinite", "regularizer")
        rows = [
            (
                s.name,
                f"{s.params:,}",
                f"{s.sparsity:.1%}",
                f"{s.near_zero_fraction:.1%}",
                f"{s.l1:.4g}",
                f"{s.l2:.4g}",
                str(s.nonfinite),
                s.regularizer or "-",
            )
            for s in [*self.layers, self.total]
        ]
        if self.pattern is not None:  # one more column: does each weight satisfy it?
            header = header + (self.pattern,)
            marks = {True: "yes", False: "no", None: "-"}
            rows = [row + (marks[s.pattern_ok],) for row, s in zip(rows, [*self.layers, self.total])]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in [header, *rows]]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        for name, (dropped, features) in (self.dropped_inputs or {}).items():
            if not dropped:
                continue
            shown = ", ".join(map(str, dropped[:20])) + (", ..." if len(dropped) > 20 else "")
            lines.append(f"input '{name}': {len(dropped)} of {features} features dropped (no weight reads them): [{shown}]")
        return "\n".join(lines)


def sparsity_report(
    model: keras.Model,
    weights: Union[str, Sequence[str]] = "kernel",
    threshold: float = 1e-3,
    relative: bool = False,
    pattern: str | None = None,
) -> SparsityReport:
    """Per-layer parameters, zeros, near-zeros, norms and regularizers.

    Args:
        model: Any Keras model.
        weights: Weight kinds to cover (a kind, a list, or `"all"`).
            Defaults to `"kernel"`.
        threshold: Near-zero threshold. Defaults to 1e-3.
        relative: Whether `threshold` is relative to each weight's RMS.
            Defaults to False (absolute).
        pattern: Optional `"N:M"` (e.g. `"2:4"`): each kernel's
            `pattern_ok` says whether it has at most N non-zeros in every
            group of M inputs (see `prune(granularity=...)`).

    Returns:
        A `SparsityReport`; `print(report)` shows a table (and, per model
        input read by `Dense` layers, the input features no weight reads, if any),
        `report.to_dict()` gives plain data.

    Raises:
        TypeError, ValueError: For an unknown weight kind, a bad threshold
            or `relative` (True or False only), a model that is not built
            yet (call it once or give it a `keras.Input`), or a model
            without such weights. NaN and inf entries are counted in
            `nonfinite`, never as zeros or near-zeros.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(2, kernel_initializer="zeros")])
    >>> rk.sparsity_report(model).total.sparsity
    1.0
    """
    stats = WeightStats(model, weights, threshold, relative, pattern)
    return SparsityReport.from_layers(stats.compute(), threshold, relative, stats.pattern,
                                      units_lib.dropped_inputs(model))
