"""The samples int8 conversion calibrates its activations' ranges on."""

from __future__ import annotations

import keras
import numpy as np

# The converter calibrates int8 ranges on this many samples at most (its
# documentation suggests a few hundred); more only slows the conversion.
CALIBRATION_SAMPLES = 200


def require_representative(data):
    """Refuses `int8=True` without calibration data."""
    if data is None:
        raise ValueError(
            "`int8=True` needs `representative_data=` (or `check=`): inputs like the model's, from which "
            "the int8 ranges of the activations are set (a few hundred training samples). "
            "Received: representative_data=None")


def calibration(data):
    """The converter's representative dataset: one sample a call, inputs in
    the model's structure (a list, or a dict keyed by input name)."""
    count = min(CALIBRATION_SAMPLES, sample_count(data, "representative_data"))
    # float64 (NumPy's default) would not match the models' float32 inputs.
    data = keras.tree.map_structure(
        lambda a: np.asarray(a, "float32") if np.asarray(a).dtype == np.float64 else np.asarray(a), data)

    def samples():
        for i in range(count):
            sample = keras.tree.map_structure(lambda a: a[i:i + 1], data)
            yield sample if isinstance(sample, dict) else list(keras.tree.flatten(sample))

    return samples


def sample_count(data, name: str) -> int:
    """The number of samples of `data` (argument `name`), the same in all its
    arrays."""
    sizes = {len(a) for a in keras.tree.flatten(data)}
    if len(sizes) != 1:
        raise ValueError(f"Invalid value for argument `{name}`: its arrays must all have the same number of "
                         f"samples. Received sizes {sorted(sizes)}")
    return sizes.pop()

