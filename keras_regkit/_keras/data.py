"""How Keras' `fit` reads arrays: the data adapter it picks for `x, y,
sample_weight` (`ArrayDataAdapter`, where `can_convert_arrays` says they
are arrays), and under TensorFlow the tf.data dataset that adapter builds
from them (`get_tf_dataset`: `fit`'s batches, in a new shuffled order for
each iterator made of it)."""

from __future__ import annotations

import importlib


def array_dataset(x, y, sample_weight, batch_size):
    """The tf.data dataset `fit(x, y, sample_weight=..., batch_size=...)`
    makes of arrays (with `fit`'s default `shuffle=True`) and its number of
    batches; None where `fit` would not read them as arrays."""
    can_convert_arrays, adapter_class = _array_adapter()
    if not can_convert_arrays((x, y, sample_weight)):
        return None
    adapter = adapter_class(x, y, sample_weight=sample_weight, batch_size=batch_size, shuffle=True)
    return adapter.get_tf_dataset(), adapter.num_batches


def _array_adapter():
    """Keras' test for arrays and its adapter for them; the fence's error
    where an upgrade moved either (the user's data is read outside, so its
    own errors stay its own)."""
    from keras_regkit._keras import moved

    what = "keras.src.trainers.data_adapters.array_data_adapter (how `fit` reads arrays)"
    try:
        module = importlib.import_module("keras.src.trainers.data_adapters.array_data_adapter")
        adapter_class = module.ArrayDataAdapter
        can_convert_arrays = module.can_convert_arrays
    except (ImportError, AttributeError) as error:
        raise moved("keras", what, error) from error
    if not all(hasattr(adapter_class, name) for name in ("get_tf_dataset", "num_batches")):
        raise moved("keras", what)
    return can_convert_arrays, adapter_class
