"""What to cut first: a score per weight (or per unit), lowest first.

Entry scores are in the units of a weight's magnitude (`|w|`, or `|w|`
weighted by curvature), so a threshold reads as a magnitude. A unit's score
is the mean of its entries' squared scores (their saliency, the loss a cut
costs to second order), relative to the mean over its layer's units.

A built-in score is computed with `keras.ops` where the weights are
(`tensors`), so that a cut of entries never copies a weight to the host;
`scores` gives the same values as NumPy arrays, for the cuts made there
(units, heads, N:M, per output) and for a `Score` of your own; `scores_at`
those of some entries only: a shrink's cut of entries on the CPU scores
only the live ones. `Curvature` computes `scores` and `scores_at` by one
NumPy code, equal bit for bit; its `tensors` may differ from them by the
backend's rounding of a square root (PyTorch's CPU `sqrt` is not correctly
rounded).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from keras_regkit import _optimizer_slots as optimizer_slots
from keras_regkit.pruning import units as units_lib
from keras_regkit.pruning.select import host_view, on_cpu
from keras_regkit.weights import WeightRef


def _numpy(value) -> np.ndarray:
    """A score tensor on the host, read-only, with no copy where it is
    already in the host's memory (`select.host_view`)."""
    return host_view(ops.cast(value, "float32"))


def _float32(variable):
    return ops.cast(variable.value, "float32")


class Score:
    """Base class: `scores(refs, optimizer)` returns, per weight, an array of
    its shape whose entries rank what to cut first (lowest first). Those
    it makes from `tensors` (`Magnitude`'s) are read-only where the
    weights are on the CPU: views of the tensors, not copies.

    A subclass may also give `tensors(refs, optimizer)`: the same scores,
    non-negative, as tensors computed where the weights are (`keras.ops`);
    cuts of entries then stay on the device. And `scores_at(refs,
    optimizer, positions)`: the scores of some entries only, on the host;
    by default read from `scores`. The shrink's cuts on the CPU ask for the
    live entries' only, which the built-in scores compute alone."""

    name = "score"

    def scores(self, refs: list[WeightRef], optimizer=None) -> list[np.ndarray]:
        tensors = self.tensors(refs, optimizer)
        if tensors is None:
            raise NotImplementedError(f"{type(self).__name__} must define `scores(refs, optimizer)`.")
        return [_numpy(t) for t in tensors]

    def tensors(self, refs: list[WeightRef], optimizer=None) -> list | None:
        """The scores as non-negative float32 tensors on the weights'
        device, or None (the default) where they are computed on the host
        only."""
        return None

    def scores_at(self, refs: list[WeightRef], optimizer, positions: list) -> list[np.ndarray] | None:
        """Per weight, the flat NumPy scores of the entries at `positions`
        (flat indices, in C order; None: every entry), equal to those
        `scores` gives there; or None where only `scores` can decide (the
        cut then scores every entry). The default reads them from `scores`;
        a built-in score computes only those entries (a shrink's later cuts
        score only the live ones)."""
        return read_at(self.scores(refs, optimizer), positions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(Score):
    """`|w|`: plain magnitude pruning."""

    name = "magnitude"

    def tensors(self, refs, optimizer=None):
        return [ops.abs(_float32(ref.variable)) for ref in refs]

    def scores_at(self, refs, optimizer, positions):
        if _redefined(self, Magnitude):
            return super().scores_at(refs, optimizer, positions)
        return [_absolute(_entries(ref.variable, p)) for ref, p in zip(refs, positions)]


class Curvature(Score):
    """`|w| · v^(1/4)`, with `v` the optimizer's running second moment of the
    weight's gradient: the square root of the saliency `w² · sqrt(v)`.

    A weight's cost of removal, to second order, is `w² · H / 2` (Optimal
    Brain Damage); Adam's and RMSprop's `sqrt(v)` tracks the gradient's
    scale, a diagonal curvature estimate the optimizer already keeps. Weights
    that the loss is sensitive to survive even when small. Where the
    optimizer keeps no second moment (SGD, or a weight it does not train),
    the score falls back to `|w|` and warns once.

    References:
        LeCun, Denker & Solla, "Optimal Brain Damage", NeurIPS 1989.
    """

    name = "curvature"

    def __init__(self):
        self._warned = False

    def tensors(self, refs, optimizer):
        moments = self._moments(refs, optimizer)
        if moments is None or not _any_positive(moments):
            return self._fell_back(refs, optimizer, moments)
        return _curvature(refs, moments)

    def scores(self, refs, optimizer=None):
        if type(self).tensors is not Curvature.tensors:  # a subclass's own tensors are its scores
            return super().scores(refs, optimizer)
        # Computed on the host by `scores_at`'s own NumPy code: the same
        # values bit for bit on every backend (PyTorch's CPU sqrt is not
        # correctly rounded; NumPy's is). The scores themselves tell that
        # some moment is above 0 (a positive score needs one), with no
        # reduction on the device: a cut's fixed cost on small models. Only
        # where none is positive are the moments read.
        moments = self._moments(refs, optimizer)
        if moments is not None:
            scores = [_curvature_of(_entries(ref.variable, None), _entries(v, None)).reshape(ref.variable.shape)
                      for ref, v in zip(refs, moments)]
            if any(np.any(s > 0) for s in scores) or _any_positive(moments):  # NaN is not > 0
                return scores
        return [_numpy(t) for t in self._fell_back(refs, optimizer, moments)]

    def scores_at(self, refs, optimizer, positions):
        if _redefined(self, Curvature):
            return super().scores_at(refs, optimizer, positions)
        moments = self._moments(refs, optimizer)
        if moments is None:
            return None  # `scores` falls back to |w|, and warns why
        scores = [_curvature_of(_entries(ref.variable, p), _entries(v, p))
                  for ref, v, p in zip(refs, moments, positions)]
        # No positive score among them: `scores` decides from every entry
        # whether the moments are all 0 (and the score falls back to |w|).
        return scores if any(np.any(s > 0) for s in scores) else None

    @staticmethod
    def _moments(refs, optimizer) -> list | None:
        """Each weight's second moment, or None if one has none: all or
        none, since |w| and |w|·v^(1/4) are on different scales and one
        global threshold needs every weight scored the same way."""
        moments = [second_moment(optimizer, ref.variable) for ref in refs]
        return None if any(v is None for v in moments) else moments

    def _fell_back(self, refs, optimizer, moments):
        """`|w|`, warning once why."""
        if not self._warned:
            self._warned = True
            name = type(optimizer_slots.inner(optimizer)).__name__ if optimizer is not None else None
            missing = [ref.path for ref in refs if second_moment(optimizer, ref.variable) is None]
            why = (f"optimizer {name} keeps no second moment of the gradients of {missing} "
                   "(Adam, AdamW, Nadam and RMSprop do)" if moments is None
                   else f"optimizer {name} has not taken a step yet (its second moments are 0)")
            warnings.warn(
                f"The shrink ranks weights by |w| alone: {why}. Pass `score='magnitude'` "
                "to silence this.",
                stacklevel=4,
            )
        return [ops.abs(_float32(ref.variable)) for ref in refs]


def _curvature(refs, moments) -> list:
    return [ops.abs(_float32(ref.variable)) * ops.sqrt(ops.sqrt(ops.maximum(_float32(v), 0.0)))
            for ref, v in zip(refs, moments)]


def _redefined(score: Score, built_in: type) -> bool:
    """Whether `score`, of a subclass of `built_in`, computes its scores
    its own way (`scores` or `tensors`): then its entries are read from
    those, not computed as the built-in's."""
    kind = type(score)
    return kind.scores is not built_in.scores or kind.tensors is not built_in.tensors


def _curvature_of(values: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """`_curvature` in NumPy on float32 arrays of its own (written in place:
    no temporaries), the same ops in the same order: the same values, bit
    for bit."""
    root = np.sqrt(np.sqrt(np.maximum(moments, np.float32(0), out=moments), out=moments), out=moments)
    return np.multiply(_absolute(values), root, out=values)


def _absolute(values: np.ndarray) -> np.ndarray:
    return np.abs(values, out=values)


def _entries(variable, positions: np.ndarray | None) -> np.ndarray:
    """The float32 values of `variable` at flat `positions` (None: all),
    read on the host, in an array of their own."""
    flat = host_view(variable.value).reshape(-1)
    if positions is None:
        return np.array(flat, dtype="float32")
    return np.take(flat, positions).astype("float32", copy=False)


def read_at(scores: list[np.ndarray], positions: list) -> list[np.ndarray]:
    """Per weight, the flat entries of its `scores` at its `positions`
    (flat indices; None: all of them)."""
    return [s.reshape(-1) if p is None else np.take(s.reshape(-1), p) for s, p in zip(scores, positions)]


def _any_positive(variables: list) -> bool:
    """Whether any entry of `variables` is above 0 (one scalar to the host)."""
    if not variables:
        return False
    return bool(ops.convert_to_numpy(ops.any(ops.stack([ops.any(ops.greater(v.value, 0)) for v in variables]))))


class Wanda(Score):
    """`|W_ij| · ||X_j||₂`: a weight times the norm of the input it reads,
    over calibration data (Sun et al., "A Simple and Effective Pruning
    Approach for Large Language Models", 2023). Built by
    `prune(..., score="wanda", calibration_data=x)`, which ranks it over all
    weights together or, as the paper does, within each output unit
    (`ranking="per_output"`).

    Args:
        norms: Per layer (by `id(layer)`), the input channels' norms, as
            `calibration.input_norms` returns them.
    """

    name = "wanda"

    def __init__(self, norms: dict):
        self.norms = norms

    def tensors(self, refs, optimizer=None):
        # Broadcast along the kernel's input axis, the last but one.
        return [ops.abs(_float32(ref.variable)) * ops.reshape(ops.convert_to_tensor(
            self.norms[id(ref.layer)], "float32"), (-1, 1)) for ref in refs]


SCORES = {"curvature": Curvature, "magnitude": Magnitude}


def get(score) -> Score:
    """A `Score` from a name (`"curvature"`, `"magnitude"`) or an instance."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str) and score in SCORES:
        return SCORES[score]()
    raise ValueError(
        f"Invalid value for argument `score`: expected one of {sorted(SCORES)} or a "
        f"keras_regkit.pruning.Score. Received: score={score!r}"
    )


class OnHost:
    """A score the cut computes on the host when it needs it: of every
    entry (`all`), or of the entries at given positions only (`at`: the
    live ones, where a shrink's later cuts find most entries dead). Every
    entry's scores are computed once at most: a `Score` whose `scores_at`
    reads them from `scores` is not asked twice where the cut falls back
    to every entry."""

    def __init__(self, score: Score, refs: list, optimizer=None):
        self.score, self.refs, self.optimizer = score, refs, optimizer
        self._every = None

    def all(self) -> list[np.ndarray]:
        if self._every is None:
            self._every = self.score.scores(self.refs, self.optimizer)
        return self._every

    def at(self, positions: list) -> list[np.ndarray] | None:
        """Per weight, the scores at `positions` (flat indices; None: every
        entry), or None where only every entry's scores can decide."""
        if type(self.score).scores_at is Score.scores_at:  # read from `scores`: once
            return read_at(self.all(), positions)
        return self.score.scores_at(self.refs, self.optimizer, positions)


def for_cut(score: Score, refs: list[WeightRef], optimizer) -> list | OnHost:
    """What the shrink's cut ranks by: `score`'s tensors where the weights
    are on an accelerator (the cut then stays there, see `select`), else
    the score to compute on the host (`OnHost`). On the CPU the weights
    already are on the host, and the host cut, which scores and ranks only
    the live entries, beats the device cut's eager passes over every entry
    (a late cut of 5.27 M parameters on 2 cores, TensorFlow: about 50 ms
    with its hold, against 120-140 ms; under JAX and PyTorch the device cut
    was slower still)."""
    if refs and not on_cpu(refs[0].variable) and _tensors_are_its_scores(score):
        tensors = score.tensors(refs, optimizer)
        if tensors is not None:
            return tensors
    return OnHost(score, refs, optimizer)


def _tensors_are_its_scores(score: Score) -> bool:
    """Whether `score.tensors` gives what its `scores` gives: not where a
    subclass redefines `scores` below the class whose `tensors` it has
    (a built-in score's subclass that scores its own way)."""
    def owner(name):
        return next(kind for kind in type(score).__mro__ if name in vars(kind))
    return issubclass(owner("tensors"), owner("scores"))


def second_moment(optimizer, variable) -> keras.Variable | None:
    """The optimizer's running second moment of `variable`'s gradient (its
    `velocity` slot: Adam, AdamW, Nadam, RMSprop), or None."""
    return optimizer_slots.slot(optimizer, variable, "velocity")


def unit_scores(entry_scores, axes: int = 1) -> np.ndarray:
    """One score per unit (the trailing `axes`): the mean of its entries'
    squared scores, relative to the mean over the layer's units, so that
    layers of different fan-in and scale compare fairly (1.0 is the layer's
    average unit; dead units count in the mean: the fewer a layer keeps, the
    higher its survivors score).

    `entry_scores` is a kernel's scores, or a list of 2-D arrays (entries x
    units, see `units.per_head`) when a unit spans several weights: an
    attention head's mean runs over its entries in the query, key, value and
    output projections together."""
    if isinstance(entry_scores, (list, tuple)):
        columns = np.concatenate([np.square(part) for part in entry_scores], axis=0)
    else:
        columns = units_lib.per_unit(np.square(entry_scores), axes)
    saliency = columns.mean(axis=0)
    layer_mean = saliency.mean()
    return saliency / layer_mean if layer_mean > 0 else np.zeros_like(saliency)
