"""keras_regkit: weight regularization and shrinking, native to Keras 3.

Importing the package registers every class for `keras.saving.load_model`:
run `import keras_regkit` before loading a model saved with it (or pass
`custom_objects=keras_regkit.custom_objects()`).
"""

# First: as the command line, answer --help before Keras loads, then load it quietly.
from keras_regkit import _startup  # noqa: F401
from keras_regkit import callbacks, regularizers, schedules
from keras_regkit.attach import Attachment, apply_regularizers, reapply_regularizers, remove_regularizers
from keras_regkit import shrinking
from keras_regkit.shrinking import ShrinkResult, shrink
from keras_regkit.compact import CompactResult, compact, dead_units
from keras_regkit.deploy import ExportCheckError, ExportResult, Runtime, export
from keras_regkit.pruning import HoldZeros, PruneResult, prune, release_zeros
from keras_regkit.saving import custom_objects
from keras_regkit.search import StrengthSearchResult, search_strength
from keras_regkit.stats import LayerStats, SparsityReport, sparsity_report
from keras_regkit.weights import WEIGHT_KINDS, WeightRef, iter_weights

__version__ = "0.1.0"

__all__ = [
    "Attachment",
    "CompactResult",
    "ExportCheckError",
    "ExportResult",
    "HoldZeros",
    "LayerStats",
    "PruneResult",
    "Runtime",
    "ShrinkResult",
    "SparsityReport",
    "StrengthSearchResult",
    "WEIGHT_KINDS",
    "WeightRef",
    "apply_regularizers",
    "callbacks",
    "compact",
    "custom_objects",
    "dead_units",
    "export",
    "iter_weights",
    "prune",
    "reapply_regularizers",
    "regularizers",
    "release_zeros",
    "remove_regularizers",
    "schedules",
    "search_strength",
    "shrink",
    "shrinking",
    "sparsity_report",
]
