"""One walk over a model's layers and the weights that penalties act on.

Every feature that touches weights (attaching penalties, statistics, pruning)
goes through `iter_weights`, so nested models, RNN cells and the mapping from a
weight to the layer-config attribute that saves its regularizer live here only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable, Iterator, Sequence, Union

import keras
import numpy as np

from keras_regkit import layers as layers_lib
from keras_regkit._keras.layers import argument_attribute, sublayers
from keras_regkit.layers.kinds import check_weight_pairs

# kind -> the (variable attribute, regularizer attribute) pairs that may
# hold it: the weights of a layer whose registered kind declares none (see
# `keras_regkit.layers`). Read-only: a layer of your own declares its
# weights in its `LayerKind` or with `regkit_weights` (see `iter_weights`).
WEIGHT_KINDS = layers_lib.WEIGHT_KINDS

# The method a layer of your own defines to take part (see `iter_weights`).
DECLARATION = "regkit_weights"

LayerSelector = Union[str, type, Callable[[keras.layers.Layer], bool]]


@dataclasses.dataclass(frozen=True, eq=False)
class WeightRef:
    """One penalisable weight of a model.

    Attributes:
        path: Slash-separated layer names from the top model down,
            e.g. `"encoder/dense_1"`.
        layer: The layer that owns the variable (for RNNs, the cell).
        kind: The weight kind, a key of `WEIGHT_KINDS`.
        variable: The `keras.Variable` itself.
        config_attr: The layer attribute that Keras saves the regularizer from.
        owner: None, or the composite layer (e.g. `MultiHeadAttention`) that
            contains `layer` and rebuilds it from its own config on reload,
            so a regularizer set on `layer` would not be saved.
        parent: None, or the layer that holds `layer` directly (for the
            query projection of a `MultiHeadAttention`, the attention layer:
            what a head is made of is read from there).

    Example:

    >>> model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(2, name="lstm")])
    >>> ref, = rk.iter_weights(model, "recurrent_kernel")
    >>> ref.path, ref.kind, ref.config_attr, tuple(ref.variable.shape)
    ('lstm/lstm_cell', 'recurrent_kernel', 'recurrent_regularizer', (2, 8))
    """

    path: str
    layer: keras.layers.Layer
    kind: str
    variable: keras.Variable
    config_attr: str
    owner: keras.layers.Layer | None = None
    parent: keras.layers.Layer | None = None

    @property
    def name(self) -> str:
        """The key the weight goes by in reports and logs: its path, with its
        kind appended unless it is a kernel (e.g. `"dense"`, `"dense/bias"`)."""
        return self.path if self.kind == "kernel" else f"{self.path}/{self.kind}"

    @property
    def regularizer(self):
        return self.variable.regularizer

    def set_regularizer(self, regularizer) -> None:
        # Both places: the variable is what the loss reads, the attribute is
        # what `get_config` (and so `model.save`) writes.
        setattr(self.layer, self.config_attr, regularizer)
        self.variable.regularizer = regularizer


def normalize_kinds(weights: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Returns `weights` as a tuple of known kinds (`"all"` for every kind),
    or raises `ValueError`."""
    if isinstance(weights, str) and weights == "all":
        return tuple(WEIGHT_KINDS)
    # Anything but a str or a list/tuple of them (None, a number) is refused
    # here, not by `tuple()` with a message that names no argument.
    if isinstance(weights, str):
        kinds = (weights,)
    else:
        kinds = tuple(weights) if isinstance(weights, (list, tuple)) else ()
    unknown = [k for k in kinds if not isinstance(k, str) or k not in WEIGHT_KINDS]
    # Once each: a kind named twice would report (and count) its weights twice.
    kinds = tuple(dict.fromkeys(k for k in kinds if k not in unknown))
    if unknown or not kinds:
        raise ValueError(
            f"Invalid value for argument `weights`: expected one of "
            f"{sorted(WEIGHT_KINDS)}, a list of them, or 'all'. Received: "
            f"weights={weights!r}"
        )
    return kinds


def iter_layers(model: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer, tuple]]:
    """Yields `(path, layer, ancestors)` depth-first for every sublayer.

    Nested Functional, Sequential and subclassed models and wrapper layers
    (Bidirectional, TimeDistributed, RNN cells) are entered. A layer shared
    between two places is yielded once.
    """
    seen = set()

    def walk(parent, prefix, ancestors):
        for layer in sublayers(parent, recursive=False):
            if id(layer) in seen or isinstance(layer, keras.layers.InputLayer):
                continue
            seen.add(id(layer))
            path = f"{prefix}{layer.name}"
            yield path, layer, ancestors
            yield from walk(layer, path + "/", ancestors + (layer,))

    yield from walk(model, "", ())


def _composite_owner(ancestors):
    # Models, RNNs (their config reads the cell's) and wrappers (Bidirectional,
    # TimeDistributed: they save the inner layer's config) pass a sublayer's
    # regularizer through `save`. Any other layer with sublayers (attention,
    # custom blocks) rebuilds them from its own arguments and drops it.
    passes_through = (keras.Model, keras.layers.RNN, keras.layers.Wrapper)
    for ancestor in ancestors:
        if not isinstance(ancestor, passes_through):
            return ancestor
    return None


def owner_config_attr(owner: keras.layers.Layer, config_attr: str) -> str | None:
    """The attribute of composite layer `owner` that its config saves the
    regularizer of every inner weight of a kind from (`MultiHeadAttention`'s
    `kernel_regularizer` argument, kept as `_kernel_regularizer`), or None
    when its config has no such argument (KerasHub's `TransformerEncoder`)."""
    try:
        if config_attr not in type(owner).get_config(owner):  # not our save hook
            return None
    except NotImplementedError:
        return None
    return argument_attribute(owner, config_attr)


def _declared(layer) -> dict | None:
    """What `layer.regkit_weights()` declares, checked, or None."""
    declare = getattr(layer, DECLARATION, None)
    if not callable(declare):
        return None
    declared = declare()
    check_weight_pairs(
        declared, f"Layer '{layer.name}' ({type(layer).__name__}): what `{DECLARATION}()` returns")
    for kind, (variable_attr, config_attr) in declared.items():
        if not isinstance(getattr(layer, variable_attr, None), keras.Variable) or not hasattr(layer, config_attr):
            raise TypeError(
                f"Layer '{layer.name}' ({type(layer).__name__}) declares its {kind!r} as "
                f"({variable_attr!r}, {config_attr!r}) in `{DECLARATION}()`, but `layer.{variable_attr}` is not a "
                f"keras.Variable or `layer.{config_attr}` does not exist. The regularizer attribute must exist "
                "(None when unset) and be saved by the layer's get_config, or a reload drops the penalty."
            )
    return declared


def _weight_of(layer, kind):
    declared = _declared(layer)
    if declared is not None:
        # The layer's own word replaces its kind's for it.
        if kind not in declared:
            return None
        variable_attr, config_attr = declared[kind]
        return getattr(layer, variable_attr), config_attr
    registered = layers_lib.kind_of(layer).weights
    if registered is None:
        candidates = WEIGHT_KINDS[kind]
    elif kind in registered:
        candidates = (registered[kind],)
        variable_attr, config_attr = registered[kind]
        if getattr(layer, variable_attr, None) is not None and not hasattr(layer, config_attr):
            raise TypeError(
                f"Layer '{layer.name}' ({type(layer).__name__}) declares its {kind!r} as ({variable_attr!r}, "
                f"{config_attr!r}) in its LayerKind, but `layer.{config_attr}` does not exist. The regularizer "
                "attribute must exist (None when unset) and be saved by the layer's get_config, or a reload "
                "drops the penalty.")
    else:
        return None
    for variable_attr, config_attr in candidates:
        variable = getattr(layer, variable_attr, None)
        if isinstance(variable, keras.Variable) and hasattr(layer, config_attr):
            return variable, config_attr
    return None


def _matches(selector: LayerSelector, path: str, layer) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(path, selector) or fnmatch.fnmatchcase(
            layer.name, selector
        )
    if isinstance(selector, type):
        return isinstance(layer, selector)
    selected = selector(layer)
    # Only a real bool: a NumPy array's truth value is ambiguous, and a
    # string or a number would select by accident.
    if not isinstance(selected, (bool, np.bool_)):
        raise TypeError(
            f"Invalid layer selector {_describe(selector)}: a callable selector "
            "must return True or False for each layer. It returned "
            f"{selected!r} (type {type(selected).__name__}) for layer "
            f"'{path}'; wrap its result in `bool(...)` if that is what you mean."
        )
    return bool(selected)


def check_selector(selector) -> None:
    if not (isinstance(selector, (str, type)) or callable(selector)):
        raise TypeError(
            "Invalid layer selector: expected a name glob (str), a layer class "
            f"or a callable taking a layer. Received: {selector!r}"
        )


def iter_weights(
    model: keras.layers.Layer,
    weights: Union[str, Sequence[str]] = "kernel",
    layers: LayerSelector | None = None,
) -> Iterator[WeightRef]:
    """Yields a `WeightRef` for every weight of the given kinds.

    A layer's weights are those its registered kind declares (see
    `keras_regkit.layers.LayerKind`), or else those of `WEIGHT_KINDS` it
    holds. A layer of your own takes part (in penalties, statistics,
    pruning and the shrink) by registering a `LayerKind` with `weights`
    (which also lets it declare its units for `compact`), or by defining
    `regkit_weights(self)`, which returns the same: a dict from a kind to
    the pair (variable attribute, regularizer attribute), e.g.
    `{"kernel": ("w", "w_regularizer")}`. The regularizer attribute must
    exist (None when unset) and be saved by the layer's `get_config`.

    Args:
        model: A Keras model or layer.
        weights: A weight kind or a list of kinds (keys of `WEIGHT_KINDS`).
        layers: Optional selector. A layer is selected when the selector
            matches it or one of the layers that contain it, so selecting an
            `LSTM` (or a nested model) selects the cells (layers) inside it.

    Yields:
        `WeightRef`s, in model order.

    Raises:
        ValueError, TypeError: For an unknown kind, a bad selector, or a
            model that is not built yet (it has no weights: call it once or
            give it a `keras.Input`).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> [(ref.path, ref.kind) for ref in rk.iter_weights(model, ["kernel", "bias"])]
    [('d', 'kernel'), ('d', 'bias')]
    """
    kinds = normalize_kinds(weights)
    if layers is not None:
        check_selector(layers)
    check_built(model)  # unbuilt, it has no weights: an empty walk would say nothing
    for path, layer, ancestors in iter_layers(model):
        if layers is not None and not selects(layers, path, layer, ancestors):
            continue
        kind_of_variable: dict[int, str] = {}
        for kind in kinds:
            found = _weight_of(layer, kind)
            if found is not None:
                _check_one_kind(layer, found[0], kind, kind_of_variable)
                yield WeightRef(path, layer, kind, found[0], found[1], _composite_owner(ancestors),
                                ancestors[-1] if ancestors else None)


def _check_one_kind(layer, variable, kind: str, kind_of_variable: dict) -> None:
    """Refuses one variable of `layer` under two kinds (two declared
    attributes holding the same variable): it would be counted, penalised
    and pruned twice."""
    first = kind_of_variable.setdefault(id(variable), kind)
    if first != kind:
        raise TypeError(
            f"Layer '{layer.name}' ({type(layer).__name__}) gives its variable '{variable.path}' as two weight "
            f"kinds, {first!r} and {kind!r} (in its LayerKind or `{DECLARATION}()`): each weight has one kind. "
            "Declare it under one.")


def selects(selector: LayerSelector, path: str, layer, ancestors: tuple) -> bool:
    """Whether `selector` selects `layer` (at `path`, inside `ancestors`,
    as `iter_layers` yields them): it matches the layer or one that
    contains it."""
    return any(_matches(selector, p, l)
               for p, l in zip(_ancestor_paths(path, len(ancestors)), ancestors + (layer,)))


def _ancestor_paths(path: str, n_ancestors: int) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(n_ancestors + 1)]


def select_weights(
    model, selector: LayerSelector, weights: Union[str, Sequence[str]] = "kernel"
) -> list[WeightRef]:
    """Like `iter_weights`, but an empty selection is a `ValueError`.

    The error lists the layers that do have weights of the requested kinds, so
    the user can correct the selector.
    """
    kinds = normalize_kinds(weights)
    check_selector(selector)  # None too: here it is a mistake, not "every layer"
    selected = list(iter_weights(model, kinds, layers=selector))
    if not selected:
        available = sorted({ref.path for ref in iter_weights(model, kinds)})
        raise ValueError(
            f"Layer selector {_describe(selector)} matched no layer with a "
            f"weight of kind {list(kinds)} in model '{model.name}'. Layers "
            f"that have one: {available or 'none'}."
        )
    return selected


def check_model(model) -> None:
    """Raises `TypeError` unless `model` is a Keras model or layer."""
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Invalid value for argument `model`: expected a keras.Model or "
            f"keras.layers.Layer. Received: model={model!r} of type {type(model).__name__}"
        )


def check_built(model) -> None:
    """Raises `ValueError` if `model` is not built: it has no weights yet, so
    "nothing matched" would blame the selector instead."""
    check_model(model)
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built yet, so it has no weights: build "
            "the model first (call it once on a batch, or give it an Input: "
            "`keras.Sequential([keras.Input(shape), ...])`)."
        )


def _describe(selector) -> str:
    if isinstance(selector, type):
        return selector.__name__
    if isinstance(selector, str):
        return repr(selector)
    return getattr(selector, "__name__", repr(selector))
