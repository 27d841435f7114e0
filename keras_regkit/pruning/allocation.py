"""How one global sparsity is shared out across layers: `OWL` and
`Sensitivity`, the per-layer sparsities of a one-shot cut.

`prune(..., allocation=)` takes `"global"` (one ranking over every selected
weight: the layers' shares are what falls out of it), `"uniform"` (every
layer the same sparsity), `"owl"` (an `OWL()` with its defaults),
`"sensitivity"` (a `Sensitivity()`), one of those objects, or a mapping of
layer names to sparsities. `"global"` and
`"uniform"` are decided inside the cut (or the reconstruction); `OWL` and
`Sensitivity` measure a signal per layer and `bounded_shares` turns it into sparsities
that keep the global count.
"""

from __future__ import annotations

import collections.abc

import numpy as np

from keras_regkit import _validate

NAMED = ("global", "uniform", "owl", "sensitivity")


class OWL:
    """Outlier-weighed layerwise sparsity (Yin et al., "Outlier Weighed
    Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
    High Sparsity", 2023): layers with more outliers are pruned less.

    A layer's outlier ratio is the fraction of its kernel entries whose
    Wanda score `|W_ij| · ||X_j||₂` (the input norm over the calibration
    data) is above `multiplier` times the layer's mean score. The ratios are
    mapped linearly onto sparsities from `sparsity + spread` (fewest
    outliers) to `sparsity - spread` (most), then shifted together so that
    the layers' zeros add up to the global count (each layer kept within
    `spread` of `sparsity`, in [0, 1], and never cut to less than half of
    what `sparsity` keeps).

    Args:
        multiplier: `M`, how many times its layer's mean score makes an
            entry an outlier, a float > 0. Defaults to 5 (the paper's).
        spread: `lambda`, how far a layer's sparsity may move from the
            global one, a float in [0, 1]. Defaults to 0.08 (the paper's).

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> result = rk.prune(model, sparsity=0.5, score="wanda", calibration_data=x,
    ...                   allocation=rk.pruning.OWL(spread=0.1))
    >>> round(result.sparsity, 2)
    0.5
    """

    def __init__(self, multiplier: float = 5.0, spread: float = 0.08):
        self.multiplier = _validate.real("multiplier", multiplier, minimum=0.0)
        if self.multiplier == 0:
            raise ValueError(f"Invalid value for argument `multiplier`: expected a float > 0. Received: {multiplier!r}")
        self.spread = _validate.real("spread", spread, maximum=1.0)

    def __repr__(self) -> str:
        return f"OWL(multiplier={self.multiplier:g}, spread={self.spread:g})"

    def sparsities(self, scores: dict, sparsity: float) -> dict:
        """Each layer's sparsity, from its Wanda scores (`name -> array`)."""
        ratios = outlier_ratios(scores, self.multiplier)
        return bounded_shares(ratios, {name: np.size(s) for name, s in scores.items()}, sparsity, self.spread)


class Sensitivity:
    """Layers whose pruning moves the model's outputs most are pruned less.

    Each selected layer is pruned alone to the global sparsity (with the
    call's own score or method) and the model's outputs on the calibration
    data compared with the unpruned model's: the relative squared error
    `||f'(x) - f(x)||² / ||f(x)||²` (no labels needed); its weights are put
    back after each. Each layer starts from the share of its entries one
    global magnitude threshold takes (what `allocation="global"` gives it);
    the errors' logarithms are mapped onto moves from `+spread` (the least
    sensitive layer) to `-spread` (the most), and all are shifted together
    so that the zeros add up to the global count, as `OWL` does around the
    uniform sparsity with its outlier ratios. Costs one prune and one
    pass over the calibration data per layer, and the unpruned model's
    outputs on it kept on the host meanwhile.

    Args:
        spread: How far a layer's sparsity may move from the global one, a
            float in [0, 1] (and never more than half of what a layer's
            start keeps). Defaults to 0.2.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(4)])
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> result = rk.prune(model, sparsity=0.5, calibration_data=x, allocation="sensitivity")
    >>> round(result.sparsity, 2)
    0.5
    """

    def __init__(self, spread: float = 0.2):
        self.spread = _validate.real("spread", spread, maximum=1.0)

    def __repr__(self) -> str:
        return f"Sensitivity(spread={self.spread:g})"

    def sparsities(self, errors: dict, magnitudes: dict, sparsity: float) -> dict:
        """Each layer's sparsity from its output error (`name -> float`),
        around the share one global magnitude threshold takes of it (from
        `magnitudes`, `name -> |w|`)."""
        # Errors span decades: their logarithm spreads them. A layer that
        # breaks the model alone (inf) is the most sensitive.
        logs = {name: np.log(max(value, 1e-12)) for name, value in errors.items() if np.isfinite(value)}
        ceiling = max(logs.values(), default=0.0) + 1.0
        signal = {name: logs.get(name, ceiling) for name in errors}
        sizes = {name: np.size(values) for name, values in magnitudes.items()}
        return bounded_shares(signal, sizes, sparsity, self.spread, global_shares(magnitudes, sparsity))


MEASURED = (OWL, Sensitivity)


def global_shares(magnitudes: dict, sparsity: float) -> dict:
    """Per layer (`name -> |w|`), the share of its entries that one
    magnitude threshold over all layers takes to reach `sparsity` (what
    `prune`'s global ranking gives each layer), ties broken by position."""
    flat = np.concatenate([np.ravel(values) for values in magnitudes.values()]).astype("float64")
    cut = np.zeros(flat.size, dtype=bool)
    count = int(round(sparsity * flat.size))
    if count:
        cut[np.argsort(flat, kind="stable")[:count]] = True
    pieces = np.split(cut, np.cumsum([np.size(values) for values in magnitudes.values()])[:-1])
    return {name: float(piece.mean()) for name, piece in zip(magnitudes, pieces)}


def outlier_ratios(scores: dict, multiplier: float) -> dict:
    """Per layer (`name -> scores array`), the fraction of its entries whose
    score is above `multiplier` times the layer's mean score."""
    ratios = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype="float64")
        ratios[name] = float(np.mean(values > multiplier * values.mean())) if values.size else 0.0
    return ratios


def bounded_shares(signal: dict, sizes: dict, sparsity: float, spread: float, center: dict | None = None) -> dict:
    """Sparsities per layer from a signal per layer (higher: pruned less),
    within `spread` of each layer's `center` (default: `sparsity` for every
    layer), in [0, 1] and never cutting more than half of what the center
    keeps, whose zeros add up to `round(sparsity * total)` exactly (each
    layer's sparsity is a whole count of its entries).

    The signal's range is mapped linearly onto `[center + spread, center -
    spread]`; all are then shifted by the one amount that keeps the total
    (found by bisection: the clipped total grows with it)."""
    names = list(signal)
    values = np.array([signal[name] for name in names], dtype="float64")
    counts = np.array([sizes[name] for name in names], dtype="float64")
    middle = np.array([sparsity if center is None else center[name] for name in names], dtype="float64")
    low = np.maximum(middle - spread, 0.0)
    # Up to half of what its center keeps: a layer cut to (nearly) nothing
    # passes (nearly) nothing on.
    high = np.minimum(middle + spread, (1.0 + middle) / 2.0)
    span = values.max() - values.min() if values.size else 0.0
    # Equal signals (or one layer): every layer its center.
    offsets = spread * (1.0 - 2.0 * (values - values.min()) / span) if span > 0 else np.zeros_like(values)
    target = sparsity * counts.sum()

    def shares(shift):
        return np.clip(middle + offsets + shift, low, high)

    lo, hi = -2.0 * spread - 1.0, 2.0 * spread + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (shares(mid) * counts).sum() < target else (lo, mid)
    zeros = _whole_counts(shares((lo + hi) / 2) * counts, counts, int(round(target)), low, high)
    return {name: float(z / n) if n else 0.0 for name, z, n in zip(names, zeros, counts)}


def _whole_counts(exact: np.ndarray, counts: np.ndarray, total: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """`exact` rounded to whole counts adding up to `total`: the floors, then
    one more for the largest remainders (or one fewer for the smallest),
    where the layer's bounds leave room."""
    zeros = np.floor(exact + 1e-9)
    remainder = exact - zeros
    order = np.argsort(-remainder, kind="stable")
    for index in order:
        if zeros.sum() >= total:
            break
        if zeros[index] + 1 <= np.floor(high[index] * counts[index] + 1e-9):
            zeros[index] += 1
    for index in order[::-1]:
        if zeros.sum() <= total:
            break
        if zeros[index] - 1 >= np.ceil(low[index] * counts[index] - 1e-9):
            zeros[index] -= 1
    return zeros.astype(int)


def get(allocation):
    """`allocation` checked: one of `NAMED` (`"owl"` as an `OWL()`,
    `"sensitivity"` as a `Sensitivity()`), one of those, or a mapping of layer names to sparsities in [0, 1]."""
    if isinstance(allocation, MEASURED):
        return allocation
    if isinstance(allocation, str) and allocation in NAMED:
        return {"owl": OWL, "sensitivity": Sensitivity}.get(allocation, lambda: allocation)()
    if isinstance(allocation, collections.abc.Mapping):
        if not allocation:
            raise ValueError("Invalid value for argument `allocation`: the mapping of layer names to sparsities is "
                             "empty.")
        checked = {}
        for name, value in allocation.items():
            if not isinstance(name, str):
                raise TypeError(
                    "Invalid value for argument `allocation`: a mapping's keys are layer names (str). Received the "
                    f"key {name!r} of type {type(name).__name__}")
            checked[name] = _validate.real(f"allocation[{name!r}]", value, maximum=1.0)
        return checked
    raise ValueError(
        f"Invalid value for argument `allocation`: expected one of {list(NAMED)}, a "
        "keras_regkit.pruning.OWL or Sensitivity, or a dict of layer names to sparsities. "
        f"Received: allocation={allocation!r}")


def check_names(allocation: dict, names: list) -> None:
    """Refuses a mapping that names a layer outside the selection, or leaves
    one of it out."""
    unknown = sorted(set(allocation) - set(names))
    missing = sorted(set(names) - set(allocation))
    if unknown or missing:
        raise ValueError(
            "Invalid value for argument `allocation`: a mapping gives a sparsity to each selected layer, by name. "
            + (f"Not selected: {unknown}. " if unknown else "") + (f"Missing: {missing}. " if missing else "")
            + f"Selected: {sorted(names)}")
