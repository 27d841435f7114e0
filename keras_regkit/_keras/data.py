"""How Keras' `fit` reads arrays: the data adapter it picks for `x, y,
sample_weight` (`ArrayDataAdapter`, where `can_convert_arrays` says they
are arrays), and under TensorFlow the tf.data dataset that adapter builds
from them (`get_tf_dataset`: shuffled each epoch by a gather of indices,
batched as `fit` batches)."""

from __future__ import annotations

import importlib

from keras_regkit._keras import moved


def array_dataset(x, y, sample_weight, batch_size):
    """The tf.data dataset `fit(x, y, sample_weight=..., batch_size=...)`
    makes of arrays, shuffled each epoch, and its batches an epoch; None
    where `fit` would not read them as arrays."""
    try:
        array_data_adapter = importlib.import_module("keras.src.trainers.data_adapters.array_data_adapter")

        if not array_data_adapter.can_convert_arrays((x, y, sample_weight)):
            return None
        adapter = array_data_adapter.ArrayDataAdapter(x, y, sample_weight=sample_weight, batch_size=batch_size,
                                                      shuffle=True)
        return adapter.get_tf_dataset(), adapter.num_batches
    except (ImportError, AttributeError) as error:
        raise moved("keras", "keras.src.trainers.data_adapters.array_data_adapter (how `fit` reads arrays)",
                    error) from error
