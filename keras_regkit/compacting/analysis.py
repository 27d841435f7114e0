"""Which channels of a model's graph `compact` can remove.

Every tensor in the graph gets, per channel (last axis), a constant value
or "not constant". Each layer call is planned by its registered kind's
compaction (see `keras_regkit.layers`): unit layers consume channels and
produce new ones (their dead units are the only source of constants),
linking layers tie input channels to output channels (a channel is removed
on both sides or on neither, its constant passing through exactly), and
every other layer is skipped: none of its input or output channels go.

A channel is removed where every layer it reaches agrees, the model outputs
never lose one, and a consumer that pads (`padding="same"`/`"causal"`) takes
only constants that are exactly 0, since folding a nonzero one into the
bias would be wrong at the borders. A channel that no reader reads (each a
depthwise convolution whose channels there are dead) goes even where it is
not constant: nothing needs its value.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit import layers as layers_lib
from keras_regkit.layers.compaction import Plan, Unsupported, channels


def compaction_of(layer):
    """The compaction of `layer`'s own class; raises `Unsupported` for a
    layer without one (or whose compaction is its base class's: a subclass
    may change `call`)."""
    cls = type(layer)
    for base, kind in layers_lib.registered(layer):
        if kind.compact is None:
            continue
        if base is cls:
            return kind.compact
        raise Unsupported(f"{cls.__name__} subclasses {base.__name__}, and may change its call")
    raise Unsupported(f"{cls.__name__} is not a layer compact can reason about")


def plan_call(layer, inputs, outputs, constants):
    """Returns `(plan, output constants, output reasons)` for one call."""
    if None in [channels(t) for t in inputs + outputs] or not outputs:
        raise Unsupported("a tensor's channel (last) axis is unknown")
    if isinstance(layer, keras.Model):
        raise Unsupported("nested model: left as is")
    return compaction_of(layer).plan(layer, inputs, outputs, constants)


class Analysis:
    """Constants and removable channels of every tensor of a model's graph
    (a `keras_regkit.layers.graph.Graph`).

    Attributes:
        const: Per tensor (by id), each channel's constant (NaN: none).
        removable: Per tensor, which channels go.
        why: Per tensor, why each channel that stays stays (None: it goes).
        plans: Per layer name, its `Plan`.
        skipped: Per layer name, why it was left as it is.
    """

    def __init__(self, graph):
        self.const: dict[int, np.ndarray] = {}
        self.removable: dict[int, np.ndarray] = {}
        self.why: dict[int, np.ndarray] = {}
        self.plans: dict[str, Plan] = {}
        self.skipped: dict[str, str] = {}
        # Per tensor, the channels its producer can drop whatever their value:
        # a link's (tied to its inputs) and a unit layer's whose activation
        # keeps units apart (a live unit nothing reads goes). Not a model
        # input's, a skipped layer's, or a softmax unit layer's.
        self.droppable: dict[int, np.ndarray] = {}
        for call in graph.calls:
            if call.is_input:
                for tensor in call.outputs:
                    self._tensor(tensor, None, f"'{call.layer.name}' is a model input")
                continue
            self._visit(call, graph.times_called(call.layer))
        self._free_unread(graph)
        for tensor in graph.outputs:
            self._restrict(tensor, False, "it is a model output")
        self._settle()

    def _tensor(self, tensor, const, producer_why):
        key = id(tensor)
        if key in self.const:
            return
        n = channels(tensor) or 0
        const = np.full(n, np.nan) if const is None else np.asarray(const, np.float64)
        self.const[key] = const
        self.removable[key] = ~np.isnan(const)
        self.why[key] = np.full(n, None, dtype=object)
        self.why[key][~self.removable[key]] = producer_why

    def _visit(self, call, times_called):
        layer, inputs, outputs = call.layer, list(call.inputs), list(call.outputs)
        name = layer.name
        for tensor in inputs:  # already there, unless its producer is unknown
            self._tensor(tensor, None, "its producer is unknown")
        try:
            if times_called > 1:
                raise Unsupported(f"shared: called {times_called} times in the model")
            plan, out_consts, out_why = plan_call(layer, inputs, outputs, [self.const[id(t)] for t in inputs])
        except Unsupported as skip:
            self.skipped[name] = str(skip)
            for tensor in outputs:
                self._tensor(tensor, None, f"'{name}' is skipped")
            for tensor in inputs:
                self._restrict(tensor, False, f"consumer '{name}' is skipped")
            self.plans[name] = Plan(layer, "skip", inputs, outputs)
            return
        self.plans[name] = plan
        for tensor, const, why in zip(outputs, out_consts, out_why):
            self._tensor(tensor, const, why or f"'{name}' output is not constant there")
            self.droppable[id(tensor)] = np.full(channels(tensor) or 0, plan.kind == "link" or why is None)
        if plan.kind == "unit" and plan.input_why is not None:
            self._restrict(inputs[0], plan.input_ok, plan.input_why)

    def _free_unread(self, graph):
        """Makes removable the channels of each tensor that every reader
        ignores (see `Plan.ignored`), constant or not, where its producer
        can drop them."""
        for key, tensor in {id(t): t for call in graph.calls for t in call.inputs}.items():
            plans = [self.plans[call.layer.name] for call in graph.readers(tensor)]
            if not plans or any(p.ignored is None or len(p.inputs) != 1 for p in plans):
                continue
            unread = np.logical_and.reduce([p.ignored for p in plans]) & self.droppable.get(key, False)
            self.removable[key] = self.removable[key] | unread
            self.why[key][unread] = None

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

