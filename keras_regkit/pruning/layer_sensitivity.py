"""How much each layer can lose: `sensitivity`, every selected layer pruned
alone at each level and the model evaluated, with its weights put back
after each; and `output_errors`, the same without labels (how far the
model's outputs move), which `allocation.Sensitivity` shares a sparsity
out by.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
import numpy as np
from keras import ops

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import calibration
from keras_regkit.pruning import granularity as granularity_lib

DEFAULT_LEVELS = (0.5, 0.7, 0.9)
# Names of metrics (and the loss) where lower is better, as Keras names them.
_LOWER_IS_BETTER = ("loss", "error", "crossentropy", "hinge", "divergence", "mse", "mae", "mape", "msle",
                    "poisson", "cosh")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of the metric named `metric` is better."""
    return any(part in metric.lower() for part in _LOWER_IS_BETTER)


@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """What `sensitivity` measured.

    Attributes:
        metric: The name of the metric evaluated (as `model.evaluate` names
            it).
        base: Its value on the unpruned model.
        levels: The sparsities each layer was pruned to, alone.
        values: Per layer (by weight name), the metric at each level.
        params: Per layer, the entries of its pruned weight.
        lower_is_better: Whether a smaller metric is better (a loss).
    """

    metric: str
    base: float
    levels: tuple
    values: dict
    params: dict
    lower_is_better: bool

    def drops(self) -> dict:
        """Per layer, how much worse the metric is at each level than on
        the unpruned model (positive: worse; a loss's rise, an accuracy's
        fall)."""
        sign = 1.0 if self.lower_is_better else -1.0
        return {name: tuple(sign * (value - self.base) for value in values) for name, values in self.values.items()}

    def to_dict(self) -> dict:
        """The figures as plain Python values (for JSON)."""
        drops = self.drops()
        return {"metric": self.metric, "base": self.base, "levels": list(self.levels),
                "lower_is_better": self.lower_is_better,
                "layers": {name: {"params": self.params[name], "values": list(values), "drops": list(drops[name])}
                           for name, values in self.values.items()}}

    def to_table(self) -> str:
        """A text table: one row per layer, the metric's drop at each level
        (the layers least able to lose weights have the largest drops)."""
        drops = self.drops()
        width = max([len("layer")] + [len(name) for name in drops])
        head = f"{'layer':<{width}}  {'params':>9}  " + "  ".join(f"{level:>8.0%}" for level in self.levels)
        rule = "-" * len(head)
        lines = [f"{self.metric} drop when one layer alone is pruned ({self.metric} unpruned: {self.base:.4g}; "
                 f"positive: worse)", head, rule]
        for name, row in drops.items():
            lines.append(f"{name:<{width}}  {self.params[name]:>9,}  " + "  ".join(f"{d:>+8.4f}" for d in row))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def plot(self, path=None, ax=None):
        """Draws each layer's drop against the level, one line per layer.

        Args:
            path: If given, the figure is written there (e.g. a `.png`).
            ax: A matplotlib `Axes` to draw on. Defaults to a new figure's.

        Returns:
            The `Axes` drawn on.

        Raises:
            ImportError: If matplotlib is not installed.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("SensitivityResult.plot needs matplotlib: pip install matplotlib "
                              "(or pip install 'keras_regkit[demo]')") from None
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        for name, row in self.drops().items():
            ax.plot([100 * level for level in self.levels], row, marker="o", label=name)
        ax.set_xlabel("sparsity of the layer alone (%)")
        ax.set_ylabel(f"{self.metric} drop")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=8)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=100)
        return ax


def check_levels(levels) -> tuple:
    """`levels` as a tuple of floats, each in (0, 1]."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(
            "Invalid value for argument `levels`: expected a non-empty list of sparsities in (0, 1]. "
            f"Received: levels={levels!r}")
    checked = tuple(_validate.real("levels", level, maximum=1.0) for level in levels)
    if 0.0 in checked:
        raise ValueError(f"Invalid value for argument `levels`: each must be in (0, 1]. Received: levels={levels!r}")
    return checked


class _Snapshot:
    """The values of the layers' weights, to put back."""

    def __init__(self, layers):
        self.saved = [(variable, ops.convert_to_numpy(variable.value).copy())
                      for layer in layers for variable in layer.weights]

    def restore(self) -> None:
        for variable, value in self.saved:
            variable.assign(value)


def _one_layer(layer):
    return lambda candidate: candidate is layer


def _holds_no_samples(data) -> bool:
    """Whether `data` plainly holds no samples: arrays of length 0, or a
    dataset whose length is 0 (one of unknown length is not looked into)."""
    if isinstance(data, (tuple, list)):
        leaves = keras.tree.flatten(data[0]) if data else []
        return not leaves or (np.ndim(leaves[0]) > 0 and np.shape(leaves[0])[0] == 0)
    try:
        return len(data) == 0
    except TypeError:
        return False


def _evaluate(model, data, batch_size) -> dict:
    if isinstance(data, (tuple, list)):
        results = model.evaluate(*data, batch_size=batch_size, verbose=0, return_dict=True)
    else:
        results = model.evaluate(data, verbose=0, return_dict=True)
    return results


def sensitivity(
    model: keras.Model,
    data,
    levels: Sequence[float] = DEFAULT_LEVELS,
    layers: weights_lib.LayerSelector = "*",
    metric: str | None = None,
    score: str = "magnitude",
    method: str = "cut",
    batch_size: int | None = None,
) -> SensitivityResult:
    """Prunes each selected layer alone at each level and evaluates the
    model on `data`: how much each layer can lose, layer by layer.

    For each selected kernel and each level, the kernel is pruned to that
    sparsity with `keras_regkit.prune` (`score`, `method`), the model is
    evaluated with `model.evaluate` (its compiled loss and metrics), and
    the layer's weights are put back before the next. The model's weights
    are the same afterwards, also when a step fails.

    Args:
        model: A compiled, built model.
        data: Labeled data as `model.evaluate` takes it: an `(x, y)` or
            `(x, y, sample_weight)` tuple of arrays, or a `tf.data.Dataset`
            or `PyDataset` of such batches. Its inputs are the calibration
            data of `score="wanda"` and `method="sparsegpt"`.
        levels: The sparsities to prune each layer to, each in (0, 1].
            Defaults to `(0.5, 0.7, 0.9)`.
        layers: Layer selector, as in `prune`. Defaults to every layer with
            a kernel.
        metric: The name of the result of `model.evaluate` to report (e.g.
            `"accuracy"`, `"loss"`). Defaults to the first compiled metric,
            or the loss if there is none.
        score: As in `prune`: `"magnitude"` or `"wanda"`.
        method: As in `prune`: `"cut"` or `"sparsegpt"`.
        batch_size: Passed to `model.evaluate` for array data.

    Returns:
        A `SensitivityResult`: a table (`str(result)`), `to_dict()`, and
        `plot()`.

    Raises:
        TypeError, ValueError: If `levels` is empty or outside (0, 1], the
            model is not compiled, `data` holds no samples, `metric` is not
            one `model.evaluate` reports, or `prune` refuses the other
            arguments. The weights are unchanged then.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"),
    ...     keras.layers.Dense(2, name="out")])
    >>> model.compile(loss="mse")
    >>> x, y = np.ones((16, 4), "float32"), np.zeros((16, 2), "float32")
    >>> result = rk.pruning.sensitivity(model, (x, y), levels=(0.5, 0.9))
    >>> sorted(result.values), result.metric
    (['hidden', 'out'], 'loss')
    """
    from keras_regkit.pruning.one_shot import prune  # one_shot imports this module for its allocation

    levels = check_levels(levels)
    weights_lib.check_built(model)
    if not getattr(model, "compiled", False):
        raise ValueError("`sensitivity` evaluates the model's compiled loss and metrics: call `model.compile(...)` "
                         "first.")
    if batch_size is not None:
        batch_size = _validate.integer("batch_size", batch_size, minimum=1)
    refs = granularity_lib.Weights().select(model, layers)
    calibration_data = data[0] if isinstance(data, (tuple, list)) else data
    reads_inputs = score == "wanda" or method == "sparsegpt"
    no_samples = "Invalid value for argument `data`: it holds no samples."
    if _holds_no_samples(data):  # before `evaluate`, which calls the model on an empty batch under PyTorch
        raise ValueError(no_samples)
    try:
        base_results = _evaluate(model, data, batch_size)
    except StopIteration:  # JAX's evaluate on no batches of unknown number (TensorFlow's returns {})
        raise ValueError(no_samples) from None
    except Exception as error:  # the first evaluation: a failure is the data's
        raise ValueError(
            "Invalid value for argument `data`: model.evaluate cannot read it "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Pass `(x, y)` arrays "
            "or a dataset of `(x, y)` batches, as `model.evaluate` takes them.") from None
    if not base_results:
        raise ValueError(no_samples)
    if metric is None:
        metric = next((name for name in base_results if name != "loss"), "loss")
    if metric not in base_results:
        raise ValueError(f"Invalid value for argument `metric`: model.evaluate reports {sorted(base_results)}. "
                         f"Received: metric={metric!r}")
    values = {}
    snapshot = _Snapshot([ref.layer for ref in refs])
    try:
        for ref in refs:
            row = []
            for level in levels:
                prune(model, sparsity=level, layers=_one_layer(ref.layer), score=score, method=method,
                      calibration_data=calibration_data if reads_inputs else None)
                row.append(float(_evaluate(model, data, batch_size)[metric]))
                snapshot.restore()
            values[ref.name] = tuple(row)
    finally:
        snapshot.restore()
    params = {ref.name: int(np.prod(ref.variable.shape)) for ref in refs}
    return SensitivityResult(metric, float(base_results[metric]), levels, values, params, lower_is_better(metric))


def output_errors(model: keras.Model, refs, calibration_data, prune_alone, steps=None) -> dict:
    """Per weight (by name), the relative squared change of the model's
    outputs on `calibration_data`, `||f'(x) - f(x)||² / ||f(x)||²`, when
    `prune_alone(ref)` prunes it alone; the weights are put back after
    each, and whatever happens. No labels needed: the unpruned model's
    outputs are the reference (kept on the host meanwhile)."""
    batches = [batch for batch in calibration.batches(calibration_data, steps=steps)]
    reference = [[np.asarray(ops.convert_to_numpy(out), "float64")
                  for out in keras.tree.flatten(model(batch, training=False))] for batch in batches]
    scale = sum(float(np.sum(out ** 2)) for outs in reference for out in outs)
    errors = {}
    snapshot = _Snapshot([ref.layer for ref in refs])
    try:
        for ref in refs:
            prune_alone(ref)
            change = 0.0
            for batch, outs in zip(batches, reference):
                for out, dense in zip(keras.tree.flatten(model(batch, training=False)), outs):
                    change += float(np.sum((np.asarray(ops.convert_to_numpy(out), "float64") - dense) ** 2))
            snapshot.restore()
            errors[ref.name] = change / scale if scale > 0 and math.isfinite(change) else math.inf
    finally:
        snapshot.restore()
    return errors
