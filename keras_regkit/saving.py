"""What `keras.saving.load_model` needs to read models that use keras_regkit.

Keras 3 finds a custom class only in its registry, which a package fills when
it is imported; it has no plugin entry point, and it imports a class's module
by itself only for its own packages (`keras`, `keras_hub`, ...). A model
saved with our regularizers or callbacks therefore loads only in a process
that has run `import keras_regkit` (which registers every class), or with
`custom_objects=keras_regkit.custom_objects()`. Without either, Keras raises
its generic "Could not locate class 'L1'" error, whose config names
`keras_regkit`.
"""

from __future__ import annotations

import keras

_PREFIX = "keras_regkit>"


def custom_objects() -> dict[str, type]:
    """Every class keras_regkit registers for saving, by registered name.

    Importing keras_regkit already registers them, so `load_model` needs
    nothing more; pass this where you load inside an explicit scope, or to
    say in code which package a model file needs.

    Returns:
        A dict such as `{"keras_regkit>L1": keras_regkit.regularizers.L1, ...}`,
        for `keras.saving.load_model(path, custom_objects=...)` or
        `keras.saving.custom_object_scope(...)`.

    Example:

    >>> objects = rk.custom_objects()
    >>> objects["keras_regkit>L1"] is rk.regularizers.L1
    True
    """
    return {
        name: obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith(_PREFIX)
    }
