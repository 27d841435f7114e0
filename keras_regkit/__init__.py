"""keras_regkit: weight regularization and shrinking, native to Keras 3.

Importing the package registers every class for `keras.saving.load_model`:
run `import keras_regkit` before loading a model saved with it (or pass
`custom_objects=keras_regkit.custom_objects()`). Importing it leaves
`sys.argv` and file descriptors alone: the `keras-regkit` command's quiet
start-up is `keras_regkit_cli`'s.
"""

from keras_regkit import callbacks, layers, regularizers, schedules
from keras_regkit.proximal import bind_proximal
from keras_regkit.attach import apply_regularizers, reapply_regularizers, remove_regularizers
from keras_regkit.pruning import prune, release_zeros
from keras_regkit.pruning.units import dead_units
from keras_regkit.shrinking import shrink
from keras_regkit.compacting.rebuild import compact
from keras_regkit.deploy import export
from keras_regkit.saving import custom_objects
from keras_regkit.search import search_strength
from keras_regkit.stats import sparsity_report
from keras_regkit.weights import iter_weights

__version__ = "0.10.8"

# What the README's examples use. Everything else lives under its module:
# result classes (`shrinking.ShrinkResult`, `pruning.PruneResult`, ...),
# the shrink's parts (`shrinking`), the pruning core (`pruning`).
__all__ = [
    "apply_regularizers",
    "bind_proximal",
    "callbacks",
    "compact",
    "custom_objects",
    "dead_units",
    "export",
    "iter_weights",
    "layers",
    "prune",
    "reapply_regularizers",
    "regularizers",
    "release_zeros",
    "remove_regularizers",
    "schedules",
    "search_strength",
    "shrink",
    "sparsity_report",
]
