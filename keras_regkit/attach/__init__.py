"""Attach penalties to, and remove them from, an existing model.

`apply` sets and removes them (through a composite layer's own argument
where it has one, so that the penalty is saved), `attachment` is what a
change returns (its undo, its JSON record, the warning when a saved config
cannot carry a penalty), `queries` reads the penalties a model carries.
"""

from keras_regkit.attach.apply import apply_regularizers, reapply_regularizers, remove_regularizers, set_regularizers
from keras_regkit.attach.attachment import Attachment
from keras_regkit.attach.queries import regularized_variables, scheduled_regularizers, total_penalty

__all__ = [
    "Attachment",
    "apply_regularizers",
    "reapply_regularizers",
    "regularized_variables",
    "remove_regularizers",
    "scheduled_regularizers",
    "set_regularizers",
    "total_penalty",
]
