"""The samples int8 conversion calibrates its activations' ranges on."""

from __future__ import annotations

import keras

# The converter calibrates int8 ranges on this many samples at most (its
# documentation suggests a few hundred); more only slows the conversion.
CALIBRATION_SAMPLES = 200


def require_representative(data, asked=True):
    """Refuses `int8=True` (or `"auto"`, which picked it) without calibration data."""
    if data is None:
        picked = " (`int8=\"auto\"` picked it: `deploy.fastest_int8`)" if asked == "auto" else ""
        raise ValueError(
            f"`int8=True`{picked} needs `representative_data=` (or `check=`): inputs like the model's, from which "
            "the int8 ranges of the activations are set (a few hundred training samples). "
            "Received: representative_data=None")


def calibration(data):
    """The converter's representative dataset: one sample a call, a list of
    one array or a dict keyed by input name.

    Args:
        data: Arrays as `inputs.conform` returns them (checked, cast to the
            model's input dtypes).
    """
    count = min(CALIBRATION_SAMPLES, len(keras.tree.flatten(data)[0]))

    def samples():
        for i in range(count):
            sample = keras.tree.map_structure(lambda a: a[i:i + 1], data)
            yield sample if isinstance(sample, dict) else list(keras.tree.flatten(sample))

    return samples
