"""Physically removes dead units and filters, so a shrunk model is smaller
and faster, not just sparser.

A unit (a Dense output unit, a Conv filter) is *dead* when every kernel weight
that feeds it is exactly zero. Its output is then the same constant
`activation(bias)` at every position (for a Conv too: a zero kernel gives 0
at the padded borders as well). `compact` rebuilds the model from its config
without those units and folds each constant into the layers that consume it,
so the outputs stay the same at inference (dropout and noise layers, which
act only in training, would see fewer channels there).

How it reasons: every tensor in the graph gets, per channel (last axis), a
constant value or "not constant". Layers are of three sorts:

- unit layers (Dense, Conv, SeparableConv) consume channels (they slice the
  input rows of their kernel and add `constant * weights` to their bias)
  and produce new ones (their dead units are the only source of constants);
- linking layers (BatchNormalization, activations, dropout, pooling,
  Flatten/Reshape, DepthwiseConv, Add, Concatenate, ...) map their input
  channels onto output channels: a channel is removed on both sides or on
  neither, and its constant passes through exactly;
- everything else is left as it is: none of its input or output channels go.

A channel is removed where every layer it reaches agrees, the model outputs
never lose one, and a consumer that pads (`padding="same"`/`"causal"`) takes
only constants that are exactly 0, since folding a nonzero one into the bias
would be wrong at the borders.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_regkit.compacting import feedforward
from keras_regkit.pruning.units import dead_mask

try:  # Keras 3 builds `keras.Model(inputs, outputs)` as this class.
    from keras.src.models.functional import Functional as _Functional
except ImportError:  # pragma: no cover - a Keras that moved it
    _Functional = None

_DENSE = (keras.layers.Dense,)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)

# Activations that act on each entry alone: a constant channel stays constant
# and the other channels don't see it. (softmax, glu, sparsemax mix channels.)
_ELEMENTWISE = frozenset(
    "linear relu relu6 sigmoid tanh elu selu gelu silu softplus softsign "
    "exponential hard_sigmoid hard_silu leaky_relu mish celu log_sigmoid "
    "hard_tanh tanh_shrink soft_shrink hard_shrink squareplus sparse_plus "
    "sparse_sigmoid threshold".split()
)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
# Identity at inference; a channel's constant passes through unchanged.
_PASS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
# A constant image pools, crops and upsamples to the same constant.
_SPATIAL = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
_ZERO_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_ONE_TO_ONE = (
    (keras.layers.BatchNormalization, keras.layers.Activation)
    + (keras.layers.Flatten, keras.layers.Reshape)
    + _ACTIVATION_LAYERS + _PASS + _SPATIAL + _ZERO_PADDING
)
_MERGE = {
    keras.layers.Add: np.sum,
    keras.layers.Average: np.mean,
    keras.layers.Multiply: np.prod,
    keras.layers.Maximum: np.max,
    keras.layers.Minimum: np.min,
}


_KNOWN = frozenset(
    _DENSE + _CONV + _SEPARABLE + _DEPTHWISE + _ONE_TO_ONE
    + tuple(_MERGE) + (keras.layers.Subtract, keras.layers.Concatenate)
)


# --- the result -----------------------------------------------------------


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
        others = {n: r for n, r in self.skipped.items() if n not in self.units}
        if others:
            lines.append("skipped: " + "; ".join(f"{n} ({r})" for n, r in others.items()))
        change = self.params_after - self.params_before
        percent = 100.0 * change / self.params_before if self.params_before else 0.0
        lines.append(
            f"params: {self.params_before:,} -> {self.params_after:,} ({percent:+.1f}%)"
        )
        return "\n".join(lines)


# --- analysis ---------------------------------------------------------------


class _Skip(Exception):
    """A layer compact leaves as it is; the message says why."""


@dataclasses.dataclass
class _Plan:
    """How one layer call takes part. `kind` is "unit" (consumes and
    produces channels), "link" (ties input to output channels through
    `classes`: entries with the same class go together) or "skip"."""

    layer: object
    kind: str
    inputs: list
    outputs: list
    classes: list | None = None
    # For "unit": what may be removed from its input (exact folding).
    input_ok: np.ndarray | None = None
    input_why: str | None = None


def _channels(tensor) -> int | None:
    shape = tensor.shape
    if len(shape) < 2 or shape[-1] is None:
        return None
    return int(shape[-1])


def _activation_name(fn) -> str:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # a custom callable Keras can't name
        return getattr(fn, "__name__", repr(fn))
    return name if isinstance(name, str) else str(name.get("class_name", name))


def _apply(fn, values: np.ndarray) -> np.ndarray:
    """`fn` on the known (non-NaN) entries of `values`, in float32 as the
    model computes."""
    out = np.full(values.shape, np.nan)
    known = ~np.isnan(values)
    if known.any():
        x = ops.convert_to_tensor(values[known][None].astype("float32"))
        out[known] = np.asarray(ops.convert_to_numpy(ops.cast(fn(x), "float32")))[0]
    return out


def _numpy(variable) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)


def _check_channels_last(layer) -> None:
    data_format = getattr(layer, "data_format", "channels_last")
    if data_format != "channels_last":
        raise _Skip(f"data_format='{data_format}' (only channels_last is supported)")


def _activated(layer, pre: np.ndarray) -> tuple[np.ndarray, str | None]:
    """`layer.activation` of the pre-activation constants (NaN: none), and
    why the constants are lost, if they are."""
    name = _activation_name(layer.activation)
    if name not in _ELEMENTWISE:
        # It mixes units: a dead unit's output depends on the live ones.
        return np.full(pre.shape, np.nan), f"activation '{name}' is not elementwise"
    return _apply(layer.activation, pre), None


def _plan_layer(layer, inputs, outputs, consts):
    """Returns `(plan, output constants, output reasons)` for one call."""
    in_c = [_channels(t) for t in inputs]
    out_c = [_channels(t) for t in outputs]
    if None in in_c or None in out_c or not outputs:
        raise _Skip("a tensor's channel (last) axis is unknown")
    cls = type(layer)
    single = len(inputs) == 1 and len(outputs) == 1
    c_in = consts[0] if single else None

    if cls in _DENSE + _CONV + _SEPARABLE:
        if not single:
            raise _Skip("called on several tensors")
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise _Skip("LoRA or quantization is enabled")
        plan = _Plan(layer, "unit", inputs, outputs, input_ok=np.ones(in_c[0], bool))
        if cls not in _DENSE:
            _check_channels_last(layer)
            if getattr(layer, "groups", 1) != 1:
                raise _Skip(f"groups={layer.groups}")
            if layer.padding != "valid":
                # Zero padding meets a nonzero constant at the borders: folding
                # it into the bias would be wrong there.
                plan.input_ok = c_in == 0
                plan.input_why = (
                    f"consumer '{layer.name}' has padding='{layer.padding}' and "
                    "the constant is not 0"
                )
        bias = _numpy(layer.bias) if layer.use_bias else np.zeros(out_c[0])
        const, why = _activated(layer, np.where(dead_mask(layer), bias, np.nan))
        return plan, [const], [why]

    if cls in _DEPTHWISE:
        if not single:
            raise _Skip("called on several tensors")
        _check_channels_last(layer)
        multiplier = layer.depth_multiplier
        plan = _Plan(layer, "link", inputs, outputs,
                     [np.arange(in_c[0]), np.arange(out_c[0]) // multiplier])
        kernel = _numpy(layer.kernel)
        spatial = tuple(range(kernel.ndim - 2))
        bias = _numpy(layer.bias) if layer.use_bias else np.zeros(out_c[0])
        # A constant input gives `c * sum(window) + bias` where the window
        # never leaves the input (padding="valid") or the constant is 0; a
        # zero kernel slice gives its bias whatever the input.
        source = np.repeat(c_in, multiplier)
        if layer.padding != "valid":
            source = np.where(source == 0, 0.0, np.nan)
        pre = source * kernel.sum(axis=spatial).reshape(-1) + bias
        dead = dead_mask(layer)
        pre[dead] = bias[dead]
        const, why = _activated(layer, pre)
        return plan, [const], [why]

    if cls in _MERGE:
        shapes = {tuple(t.shape[1:]) for t in inputs + outputs}
        if len(shapes) != 1:
            raise _Skip("its inputs broadcast against each other")
        classes = [np.arange(out_c[0])] * (len(inputs) + 1)
        const = _MERGE[cls](np.stack(consts), axis=0)  # NaN wherever one is
        return _Plan(layer, "link", inputs, outputs, classes), [const], [None]
    if cls is keras.layers.Subtract:
        if len({tuple(t.shape[1:]) for t in inputs + outputs}) != 1:
            raise _Skip("its inputs broadcast against each other")
        classes = [np.arange(out_c[0])] * 3
        return _Plan(layer, "link", inputs, outputs, classes), [consts[0] - consts[1]], [None]
    if cls is keras.layers.Concatenate:
        rank = len(outputs[0].shape)
        if layer.axis not in (-1, rank - 1):
            raise _Skip(f"axis={layer.axis} is not the channel (last) axis")
        offsets = np.cumsum([0] + in_c)
        classes = [np.arange(n) + o for n, o in zip(in_c, offsets)] + [np.arange(out_c[0])]
        return _Plan(layer, "link", inputs, outputs, classes), [np.concatenate(consts)], [None]
    if isinstance(layer, keras.Model):
        raise _Skip("nested model: left as is")
    if cls in _ONE_TO_ONE and not single:
        raise _Skip("called on several tensors")
    identity = [np.arange(in_c[0]), np.arange(out_c[0])]
    if cls is keras.layers.BatchNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else None
        if axis not in (-1, len(inputs[0].shape) - 1):
            raise _Skip(f"axis={layer.axis} is not the channel (last) axis")
        gamma = _numpy(layer.gamma) if layer.scale else 1.0
        beta = _numpy(layer.beta) if layer.center else 0.0
        # Inference-mode BatchNormalization, as `ops.batch_normalization`.
        const = (c_in - _numpy(layer.moving_mean)) / np.sqrt(
            _numpy(layer.moving_variance) + layer.epsilon
        ) * gamma + beta
        return _Plan(layer, "link", inputs, outputs, identity), [const], [None]
    if cls is keras.layers.Activation:
        name = _activation_name(layer.activation)
        if name not in _ELEMENTWISE:
            raise _Skip(f"activation '{name}' is not elementwise")
        const = _apply(layer.activation, c_in)
        return _Plan(layer, "link", inputs, outputs, identity), [const], [None]
    if cls in _ACTIVATION_LAYERS:
        return _Plan(layer, "link", inputs, outputs, identity), [_apply(layer, c_in)], [None]
    if cls in _PASS or cls in _SPATIAL:
        _check_channels_last(layer)
        return _Plan(layer, "link", inputs, outputs, identity), [c_in], [None]
    if cls in _ZERO_PADDING:
        _check_channels_last(layer)
        const = np.where(c_in == 0, 0.0, np.nan)  # the padding is 0, not c
        return _Plan(layer, "link", inputs, outputs, identity), [const], [None]
    if cls in (keras.layers.Flatten, keras.layers.Reshape):
        _check_channels_last(layer)
        return _plan_reshape(layer, inputs, outputs, in_c[0], out_c[0], c_in)
    known = [base.__name__ for base in cls.__mro__[1:] if base in _KNOWN]
    if known:
        # Only the exact Keras classes are known: a subclass may change `call`.
        raise _Skip(f"{cls.__name__} subclasses {known[0]}, and may change its call")
    raise _Skip(f"{cls.__name__} is not a layer compact can reason about")


def _plan_reshape(layer, inputs, outputs, c_in, c_out, const_in):
    # Reshape keeps the flat (row-major) order, channels innermost. When one
    # channel count divides the other, flat entry p is in input channel
    # p % c_in and output channel p % c_out, and both sides agree on
    # p % min(c_in, c_out): that residue is the unit that can go.
    small, big = sorted((c_in, c_out))
    if big % small:
        raise _Skip(
            f"it maps {c_in} input channels onto {c_out}: neither divides the other"
        )
    in_cls, out_cls = np.arange(c_in) % small, np.arange(c_out) % small
    # An output channel is constant when all the input channels it gathers
    # share one constant.
    rows = const_in.reshape(-1, small)
    common = np.where(np.all(rows == rows[0], axis=0), rows[0], np.nan)
    plan = _Plan(layer, "link", inputs, outputs, [in_cls, out_cls])
    return plan, [common[out_cls]], [None]


class _Analysis:
    """Constants and removable channels of every tensor of a model's graph."""

    def __init__(self, graph, outputs):
        self.const: dict[int, np.ndarray] = {}
        self.removable: dict[int, np.ndarray] = {}
        self.why: dict[int, np.ndarray] = {}
        self.plans: dict[str, _Plan] = {}
        self.skipped: dict[str, str] = {}
        calls: dict[int, int] = {}
        nodes = [n for depth in sorted(graph._nodes_by_depth, reverse=True)
                 for n in graph._nodes_by_depth[depth]]
        for node in nodes:
            calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for node in nodes:
            if node.is_input or isinstance(node.operation, keras.layers.InputLayer):
                for tensor in node.output_tensors:
                    self._tensor(tensor, None, f"'{node.operation.name}' is a model input")
                continue
            self._visit(node, calls[id(node.operation)])
        for tensor in outputs:
            self._restrict(tensor, False, "it is a model output")
        self._settle()

    def _tensor(self, tensor, const, producer_why):
        key = id(tensor)
        if key in self.const:
            return
        n = _channels(tensor) or 0
        const = np.full(n, np.nan) if const is None else np.asarray(const, np.float64)
        self.const[key] = const
        self.removable[key] = ~np.isnan(const)
        self.why[key] = np.full(n, None, dtype=object)
        self.why[key][~self.removable[key]] = producer_why

    def _visit(self, node, calls):
        layer = node.operation
        inputs, outputs = list(node.input_tensors), list(node.output_tensors)
        name = layer.name
        for tensor in inputs:  # already there, unless its producer is unknown
            self._tensor(tensor, None, "its producer is unknown")
        try:
            if calls > 1:
                raise _Skip(f"shared: called {calls} times in the model")
            consts = [self.const[id(t)] for t in inputs]
            plan, out_consts, out_why = _plan_layer(layer, inputs, outputs, consts)
        except _Skip as skip:
            self.skipped[name] = str(skip)
            for tensor in outputs:
                self._tensor(tensor, None, f"'{name}' is skipped")
            for tensor in inputs:
                self._restrict(tensor, False, f"consumer '{name}' is skipped")
            self.plans[name] = _Plan(layer, "skip", inputs, outputs)
            return
        self.plans[name] = plan
        for tensor, const, why in zip(outputs, out_consts, out_why):
            self._tensor(tensor, const, why or f"'{name}' output is not constant there")
        if plan.kind == "unit" and plan.input_why is not None:
            self._restrict(inputs[0], plan.input_ok, plan.input_why)

    def _restrict(self, tensor, allowed, why):
        key = id(tensor)
        newly = self.removable[key] & ~np.asarray(allowed, bool)
        if newly.any():
            self.removable[key] = self.removable[key] & ~newly
            self.why[key][newly] = why if isinstance(why, str) else why[newly]
            return True
        return False

    def _settle(self):
        while True:
            self._settle_links()
            # A layer can't have zero units, nor a tensor zero channels: where
            # every channel would go, keep the first, and tie it through again.
            emptied = [k for k, r in self.removable.items() if r.size and r.all()]
            if not emptied:
                return
            for key in emptied:
                self.removable[key][0] = False
                self.why[key][0] = "a layer keeps at least one unit"

    def _settle_links(self):
        # Links only ever clear channels, so this ends.
        links = [p for p in self.plans.values() if p.kind == "link"]
        changed = True
        while changed:
            changed = False
            for plan in links:
                members = list(zip(plan.inputs + plan.outputs, plan.classes))
                size = 1 + max((int(c.max()) for _, c in members if c.size), default=-1)
                class_ok = np.ones(size, bool)
                class_why = np.full(size, None, dtype=object)
                # Reversed, so the first member's reason is the one kept.
                for tensor, classes in reversed(members):
                    bad = ~self.removable[id(tensor)]
                    class_ok[classes[bad]] = False
                    class_why[classes[bad]] = self.why[id(tensor)][bad]
                for tensor, classes in members:
                    changed |= self._restrict(tensor, class_ok[classes], class_why[classes])


# --- rebuilding ---------------------------------------------------------------


def _strip_regkit(config):
    """Drops keras_regkit regularizers and constraints from a config, in
    place: they act only in training, and the new model must load where
    keras_regkit is not installed."""
    if isinstance(config, dict):
        for key, value in config.items():
            if (
                key.endswith(("_regularizer", "_constraint"))
                and isinstance(value, dict)
                and (
                    str(value.get("module", "")).startswith("keras_regkit")
                    or str(value.get("registered_name", "")).startswith("keras_regkit>")
                )
            ):
                config[key] = None
            else:
                _strip_regkit(value)
    elif isinstance(config, list):
        for value in config:
            _strip_regkit(value)


def _new_unit_weights(layer, keep_in, keep_out, const_in):
    """The sliced weights of a unit layer and its folded bias (None if it
    has no bias and the fold adds nothing)."""
    gone = ~keep_in
    if isinstance(layer, _SEPARABLE):
        depthwise, pointwise = _numpy(layer.depthwise_kernel), _numpy(layer.pointwise_kernel)
        spatial = tuple(range(depthwise.ndim - 2))
        channels, multiplier = depthwise.shape[-2:]
        rows = pointwise.reshape(channels, multiplier, -1)
        # Depthwise output of channel c is c * sum(window) per multiplier;
        # the pointwise kernel then mixes those into every filter.
        through = const_in[gone, None] * depthwise.sum(axis=spatial)[gone]
        fold = np.einsum("cm,cmf->f", through, rows[gone])
        pointwise = rows[keep_in][:, :, keep_out].reshape(
            pointwise.shape[:-2] + (-1, int(keep_out.sum()))
        )
        kernels = {"depthwise_kernel": depthwise[..., keep_in, :], "pointwise_kernel": pointwise}
    else:
        kernel = _numpy(layer.kernel)
        # A valid-padded window sums its whole kernel over a constant input.
        summed = kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)
        fold = const_in[gone] @ summed[gone]
        kernels = {"kernel": kernel[..., keep_in, :][..., keep_out]}
    bias = _numpy(layer.bias) if layer.use_bias else np.zeros(fold.shape)
    bias = (bias + fold)[keep_out]
    if not layer.use_bias and not np.any(bias):
        bias = None
    return kernels, bias


def _edit(plan, analysis, entry):
    """Changes one layer's config entry, in place, to its new channels and
    returns its new weights."""
    layer, layer_config = plan.layer, entry["config"]
    # Built from the graph's new shapes, not the saved ones.
    entry.pop("build_config", None)
    keep_in = ~analysis.removable[id(plan.inputs[0])]
    keep_out = ~analysis.removable[id(plan.outputs[0])]
    if plan.kind == "unit":
        const_in = np.nan_to_num(analysis.const[id(plan.inputs[0])])
        weights, bias = _new_unit_weights(layer, keep_in, keep_out, const_in)
        layer_config["units" if isinstance(layer, _DENSE) else "filters"] = int(keep_out.sum())
        if bias is not None:
            layer_config["use_bias"] = True
            weights["bias"] = bias
        return weights
    if isinstance(layer, _DEPTHWISE):
        bias = {"bias": _numpy(layer.bias)[keep_out]} if layer.use_bias else {}
        return {"kernel": _numpy(layer.kernel)[..., keep_in, :], **bias}
    if isinstance(layer, keras.layers.BatchNormalization):
        # Every BatchNormalization weight is one value per channel.
        return [_numpy(v)[keep_in] for v in layer.weights]
    if isinstance(layer, keras.layers.Reshape):
        target = list(layer_config["target_shape"])
        if target[-1] != -1:
            target[-1] = int(keep_out.sum())
        layer_config["target_shape"] = tuple(target)
    return None  # no weights, or none that depend on the channels


def _report(analysis):
    """Units before and after, dead units and why dead ones were kept, for
    every layer with units."""
    units, dead, kept = {}, {}, {}
    for name, plan in analysis.plans.items():
        if not isinstance(plan.layer, keras.layers.Layer):
            continue
        mask = dead_mask(plan.layer)
        if mask is None:
            continue
        if plan.kind == "skip":
            gone, reasons = np.zeros(mask.shape, bool), [analysis.skipped[name]]
        else:
            gone = analysis.removable[id(plan.outputs[0])]
            reasons = analysis.why[id(plan.outputs[0])][mask & ~gone]
        units[name] = (int(mask.size), int(mask.size - gone.sum()))
        dead[name] = int(mask.sum())
        n_kept = int((mask & ~gone).sum())
        if n_kept:
            kept[name] = f"{n_kept} dead kept: " + "; ".join(dict.fromkeys(r for r in reasons if r))
    return units, dead, kept


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value for argument `model`: expected a built keras.Model "
            "(Sequential or Functional). Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if type(model) is keras.Sequential:
        if model._functional is None:
            raise ValueError(
                "Invalid value for argument `model`: expected a built "
                f"keras.Model. Received: Sequential model '{model.name}' with "
                "no known input shape; start it with `keras.Input(shape)` or "
                "call `model.build(input_shape)` first."
            )
    elif _Functional is None or type(model) is not _Functional:
        raise ValueError(
            "Invalid value for argument `model`: expected a keras.Sequential "
            "or a Functional `keras.Model(inputs, outputs)`, which compact "
            "rebuilds from their config. Received: model "
            f"'{model.name}' of type {type(model).__name__} (subclassed "
            "models have no graph to edit)."
        )


def compact(model: keras.Model, custom_objects: dict | None = None) -> CompactResult:
    """Returns a smaller copy of `model` with its dead units and filters
    removed, computing the same outputs.

    A unit is dead when all the kernel weights that feed it are exactly zero
    (see `dead_units`); its output is the constant `activation(bias)`. The
    unit is removed, the consumers' input weights are sliced to match, and
    the constant is folded into their biases through BatchNormalization,
    elementwise activations, dropout, pooling, Flatten/Reshape,
    DepthwiseConv, Add/Subtract/Multiply/Average/Maximum/Minimum (a channel
    goes only if it is dead in every branch) and Concatenate (channels keep
    their offsets). A consumer without a bias gets one if the folded
    constants are nonzero.

    Transformer layers that build their feed-forward block from an
    `intermediate_dim` argument (KerasHub's `TransformerEncoder` and
    `TransformerDecoder`) are rebuilt with fewer intermediate units (see
    `keras_regkit.compacting.feedforward`); a model that is or holds a subclassed
    functional model (a KerasHub backbone) comes back as a plain Functional
    model of the same layers. A feed-forward block written with plain
    `Dense` layers is compacted like any other.

    Attention layers lose their dead heads (a head is dead when its slice of
    the output projection is all zero; see `dead_units`): a
    `MultiHeadAttention` is rebuilt from its config with a smaller
    `num_heads` and the kept heads' slices of its query, key, value and
    output projections. KerasHub's `TransformerEncoder`/`TransformerDecoder`
    derive their heads' width from `num_heads`, so one with dead heads is
    written out as its own sublayers (plain Keras layers and ops, named
    `<layer>_<sublayer>`; see `keras_regkit.compacting.attention`). Every
    attention layer keeps at least one head.

    What stays: the model's output units; channels that reach a layer compact
    cannot reason about (listed in `skipped`: unknown or subclassed layers,
    nested models, shared layers, channels_first, grouped convolutions);
    channels whose nonzero constant would meet zero padding in a
    `padding="same"` or `"causal"` consumer, where folding is not exact at
    the borders (listed in `kept`).

    The new model is built with `from_config` from the original's config with
    fewer units, then given the sliced weights. keras_regkit's regularizers
    and constraints are dropped from it (they only act in training), so it
    saves and loads without keras_regkit; Keras' own ones stay. It is not
    compiled. The original model is unchanged.

    Args:
        model: A built `keras.Sequential` or Functional `keras.Model`, with
            channels-last layers.
        custom_objects: Optional dict of the model's custom classes that are
            not registered with Keras, as in `keras.saving.load_model`.

    Returns:
        A `CompactResult`: the new model, units before and after per layer,
        skipped layers and parameter counts.

    Raises:
        TypeError: If `model` is not a `keras.Model`.
        ValueError: If `model` is not built, or is a subclassed model.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)),
    ...     keras.layers.Dense(4, activation="relu", name="h"),
    ...     keras.layers.Dense(2, name="out")])
    >>> kernel = model.get_layer("h").kernel
    >>> _ = kernel.assign(kernel * np.array([1, 0, 1, 0], "float32"))  # 2 dead
    >>> result = rk.compact(model)
    >>> result.units["h"], result.params_before - result.params_after
    ((4, 2), 12)
    >>> x = np.ones((1, 3), "float32")
    >>> np.allclose(result.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    True
    """
    if isinstance(model, keras.Model) and model.built and feedforward.needs_flattening(model):
        original = model
        model, block_units, block_dead = feedforward.flatten(model)
    else:
        original, block_units, block_dead = model, {}, {}
    _check_model(model)
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(
            "Invalid value for argument `custom_objects`: expected None or a dict "
            "mapping class names to classes, as for `keras.saving.load_model`. "
            f"Received: custom_objects={custom_objects!r}"
        )
    graph = model._functional if type(model) is keras.Sequential else model
    analysis = _Analysis(graph, graph.outputs)

    config = model.get_config()
    entries = {entry["config"]["name"]: entry for entry in config["layers"]}
    # Layer -> {variable attribute: value}, or a list for `set_weights`.
    new_weights = {}
    for name, plan in analysis.plans.items():
        if plan.kind != "skip" and any(
            analysis.removable[id(t)].any() for t in plan.inputs + plan.outputs
        ):
            new_weights[name] = _edit(plan, analysis, entries[name])
    _strip_regkit(config)
    new_model = type(model).from_config(config, custom_objects=custom_objects)

    for layer in model.layers:
        new_layer = new_model.get_layer(layer.name)
        values = new_weights.get(layer.name)
        if values is not None:
            if isinstance(values, list):
                new_layer.set_weights(values)
                continue
            for attr, value in values.items():
                variable = getattr(new_layer, attr)
                variable.assign(value.astype(variable.dtype))
        else:
            new_layer.set_weights(layer.get_weights())
    units, dead, kept = _report(analysis)
    return CompactResult(
        model=new_model,
        # Flattening's figures first: an attention layer rebuilt there has no
        # dead heads left for the analysis to see.
        units={**block_units, **{k: v for k, v in units.items() if k not in block_units}},
        dead={**block_dead, **{k: v for k, v in dead.items() if k not in block_dead}},
        kept=kept,
        skipped=dict(analysis.skipped),
        params_before=int(original.count_params()),
        params_after=int(new_model.count_params()),
    )
