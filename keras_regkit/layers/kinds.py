"""The layer registry: one `LayerKind` per layer class, found along a
layer's class hierarchy (the most specific registered class wins, as
`isinstance` would)."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Callable, Mapping

import keras

# Weight kind -> the (variable attribute, regularizer attribute) pairs that
# may hold it, tried in order. A layer whose kind declares no `weights` has
# the weights of this table it holds (both attributes present). Keras saves
# a regularizer from the regularizer attribute, so both must be set or a
# reload silently drops it.
WEIGHT_KINDS = types.MappingProxyType({
    "kernel": (("kernel", "kernel_regularizer"),),
    "bias": (("bias", "bias_regularizer"),),
    "recurrent_kernel": (("recurrent_kernel", "recurrent_regularizer"),),
    "depthwise_kernel": (
        ("depthwise_kernel", "depthwise_regularizer"),  # SeparableConv
        ("kernel", "depthwise_regularizer"),  # DepthwiseConv
    ),
    "pointwise_kernel": (("pointwise_kernel", "pointwise_regularizer"),),
    "embeddings": (("embeddings", "embeddings_regularizer"),),
    "gamma": (("gamma", "gamma_regularizer"),),
    "beta": (("beta", "beta_regularizer"),),
})


def check_weight_pairs(declared, who: str) -> None:
    """Raises `TypeError` unless `declared` maps weight kinds (keys of
    `WEIGHT_KINDS`) to `(variable attribute, regularizer attribute)` pairs,
    each attribute under one kind only."""
    if not isinstance(declared, Mapping) or not all(
        kind in WEIGHT_KINDS and isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, str) for a in pair)
        for kind, pair in declared.items()
    ):
        raise TypeError(
            f"{who} must be a dict from a weight kind (one of {sorted(WEIGHT_KINDS)}) to a pair (variable "
            f"attribute, regularizer attribute), e.g. {{'kernel': ('w', 'w_regularizer')}}. Received: {declared!r}"
        )
    # A variable under two kinds would be counted, penalised and pruned
    # twice; two variables saving their regularizers to one attribute
    # would reload with one penalty for both.
    for position, role in ((0, "variable"), (1, "regularizer")):
        kinds_of: dict[str, list[str]] = {}
        for kind, pair in declared.items():
            kinds_of.setdefault(pair[position], []).append(kind)
        shared = {attribute: kinds for attribute, kinds in kinds_of.items() if len(kinds) > 1}
        if shared:
            attribute, kinds = next(iter(shared.items()))
            raise TypeError(
                f"{who}: the {role} attribute {attribute!r} is given to several weight kinds {kinds}. Each "
                "weight has one kind (or it is counted, penalised and pruned twice) and its own regularizer "
                "attribute (or a reload gives all of them one penalty): declare it under one kind. "
                f"Received: {declared!r}"
            )


@dataclasses.dataclass(frozen=True)
class FeedForward:
    """A feed-forward block held inside a layer: two `Dense` sublayers (by
    name), the first producing `argument` units (a config argument of the
    layer) with its activation, the second mapping them back."""

    inner: str
    outer: str
    argument: str


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What keras_regkit knows about one layer class, in every feature.

    Every field is optional: a kind declares what applies to its layers.

    Attributes:
        weights: Its penalisable weights, a dict from a weight kind (`"kernel"`,
            `"bias"`, ... see `WEIGHT_KINDS`) to the pair (variable
            attribute, regularizer attribute), e.g.
            `{"kernel": ("w", "w_regularizer")}`. The regularizer attribute
            must exist (None when unset) and be saved by `get_config`. None:
            the weights of `WEIGHT_KINDS` the layer holds.
        unit_kernel: The attribute of the kernel whose trailing axes index
            the layer's units (output units, filters), or None. A unit whose
            slice is all zero is dead; `prune(granularity="unit")` and the
            shrink cut whole units of it.
        unit_axes: How many trailing axes of the unit kernel index units.
        input_axis: The axis of the unit kernel (from the end) that indexes
            the channels it reads, grouped by an N:M pattern and weighed by
            Wanda.
        reads_inputs: Whether those channels are the layer's own inputs
            (False for a separable convolution, whose pointwise kernel reads
            the depthwise convolution's output).
        per_feature: Whether the layer acts on each input feature alone
            (so a feature nothing reads after it is unused before it too).
        heads: For attention layers: a function from the built layer to its
            `((query, key, value), output)` projections, whose heads are
            units (heads on the last but one axis of the query, key and
            value weights, first axis of the output kernel).
        attention: For a layer holding attention layers that `compact`
            must unroll to remove their heads: a function from the layer
            to those attention layers, by attribute.
        feedforward: A `FeedForward` block that `compact` rebuilds with
            fewer units through the layer's config.
        compact: How `compact` removes channels through the layer (a
            `keras_regkit.layers.Compaction`, e.g. `Units("units")`), or
            None to leave it as it is. It applies to the registered class
            only, not its subclasses, which may change `call`.
    """

    weights: Mapping[str, tuple[str, str]] | None = None
    unit_kernel: str | None = None
    unit_axes: int = 1
    input_axis: int = -2
    reads_inputs: bool = True
    per_feature: bool = False
    heads: Callable | None = None
    attention: Callable | None = None
    feedforward: FeedForward | None = None
    compact: object | None = None

    def __post_init__(self):
        if self.weights is not None:
            check_weight_pairs(self.weights, "Invalid value for argument `weights` of LayerKind")
            object.__setattr__(self, "weights", types.MappingProxyType(dict(self.weights)))
        if self.unit_kernel is not None and not isinstance(self.unit_kernel, str):
            raise TypeError(
                "Invalid value for argument `unit_kernel` of LayerKind: expected the name of the kernel "
                f"attribute (a str) or None. Received: unit_kernel={self.unit_kernel!r}")
        if not isinstance(self.unit_axes, int) or self.unit_axes < 1:
            raise ValueError(
                "Invalid value for argument `unit_axes` of LayerKind: expected an int of at least 1. "
                f"Received: unit_axes={self.unit_axes!r}")
        if self.compact is not None and not callable(getattr(self.compact, "plan", None)):
            raise TypeError(
                "Invalid value for argument `compact` of LayerKind: expected a keras_regkit.layers."
                f"Compaction (e.g. Units('units')) or None. Received: compact={self.compact!r}")


# The kind of a layer no registered class covers.
DEFAULT = LayerKind()

_TABLE: dict[type, LayerKind] = {}
# Kinds of classes from optional libraries, added once the library is
# imported (a layer of it cannot exist before): module -> entries factory.
_LAZY: dict[str, Callable[[], dict]] = {}


def register(layer_class, kind: LayerKind | None = None):
    """Declares what keras_regkit knows about a layer class.

    Its layers then take part in every feature: penalties and reports (its
    `weights`), `prune` and the shrink (units by `unit_kernel`), and
    `compact` (by `compact`). A registration replaces an earlier one of the
    same class, built-in ones included.

    Args:
        layer_class: A subclass of `keras.layers.Layer`. Or, used as a
            decorator, the `LayerKind` itself: `@register(LayerKind(...))`.
        kind: The class's `LayerKind`.

    Returns:
        `layer_class` (or, as a decorator, a function registering the class
        it is given and returning it).

    Example:

    >>> @keras.saving.register_keras_serializable(package="doc")
    ... class MyDense(keras.layers.Dense):
    ...     pass
    >>> _ = rk.layers.register(MyDense, rk.layers.LayerKind(
    ...     unit_kernel="kernel", compact=rk.layers.Units("units")))
    >>> rk.layers.kind_of(MyDense(2)).unit_kernel
    'kernel'
    """
    if isinstance(layer_class, LayerKind) and kind is None:
        return lambda cls: register(cls, layer_class)
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            "Invalid value for argument `layer_class`: expected a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}")
    if not isinstance(kind, LayerKind):
        raise TypeError(
            f"Invalid value for argument `kind`: expected a keras_regkit.layers.LayerKind. Received: kind={kind!r}")
    _load_lazy()
    _TABLE[layer_class] = kind
    return layer_class


def unregister(layer_class) -> None:
    """Forgets the registration of `layer_class` (a no-op if it has none)."""
    _load_lazy()
    _TABLE.pop(layer_class, None)


def register_lazily(module: str, entries: Callable[[], dict]) -> None:
    """Registers the kinds `entries()` returns (class -> kind) once
    `module` is imported, so an optional library is not imported for it."""
    _LAZY[module] = entries


def _load_lazy() -> None:
    for module in [m for m in _LAZY if m in sys.modules]:
        entries = _LAZY.pop(module)
        for layer_class, kind in entries().items():
            _TABLE.setdefault(layer_class, kind)  # a user's registration made first stays


def registered(layer) -> list[tuple[type, LayerKind]]:
    """The registered classes `layer` (a layer or a class) is an instance
    of, with their kinds, the most specific first."""
    _load_lazy()
    cls = layer if isinstance(layer, type) else type(layer)
    return [(base, _TABLE[base]) for base in cls.__mro__ if base in _TABLE]


def kind_of(layer) -> LayerKind:
    """The `LayerKind` of `layer` (a layer or a layer class): that of its
    most specific registered class, or the default kind."""
    found = registered(layer)
    return found[0][1] if found else DEFAULT


def classes_with(field: str) -> tuple[type, ...]:
    """The registered classes whose kind sets `field` (e.g. `"heads"`)."""
    _load_lazy()
    return tuple(cls for cls, kind in _TABLE.items() if getattr(kind, field) not in (None, False))
