"""The layer registry: what keras_regkit knows about each layer kind,
declared once.

A `LayerKind` says, for one layer class, which weights a penalty acts on,
which kernel's slices are its units (what `prune(granularity="unit")`, the
shrink and `dead_units` count), which parts are attention heads, and how
`compact` removes channels through it (a `Compaction`). Keras' layers,
attention layers and KerasHub's transformer layers are registered here; a
layer of your own joins every feature the same way:

```python
@keras.saving.register_keras_serializable(package="my_package")
class MyDense(keras.layers.Layer):
    ...  # w: (inputs, units), b: (units,), `units` and `use_bias` in its config

rk.layers.register(MyDense, rk.layers.LayerKind(
    weights={"kernel": ("w", "w_regularizer"), "bias": ("b", "b_regularizer")},
    unit_kernel="w",
    compact=rk.layers.Units("units", kernel="w", bias="b"),
))
```

- `kinds`: `LayerKind`, `register`, `kind_of` and the table itself.
- `compaction`, `channels`: how `compact` slices a layer (`Units` for
  layers with units, links for the layers between them).
- `builtin`: the built-in entries.
- `graph`: the one view of a functional model's graph.
"""

from keras_regkit.layers.kinds import (
    WEIGHT_KINDS, FeedForward, LayerKind, classes_with, kind_of, register, registered, unregister,
)
from keras_regkit.layers.compaction import (
    Compaction, ConvUnits, Plan, SeparableConvUnits, Units, Unsupported,
)
from keras_regkit.layers.channels import (
    ActivationFunction, BatchNorm, Concatenation, DepthwiseChannels, Elementwise, Merge, Passthrough,
    Reshape, ZeroPadding,
)
from keras_regkit.layers import builtin  # noqa: F401 - fills the table

__all__ = [
    "ActivationFunction", "BatchNorm", "Compaction", "Concatenation", "ConvUnits", "DepthwiseChannels",
    "Elementwise", "FeedForward", "LayerKind", "Merge", "Passthrough", "Plan", "Reshape", "SeparableConvUnits",
    "Units", "Unsupported", "WEIGHT_KINDS", "ZeroPadding", "kind_of", "register", "registered", "unregister",
]
