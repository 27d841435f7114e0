"""Host-side decisions that every process must make alike.

Under Keras' distribution API across processes (`jax.distributed`), each
process feeds its own part of the data, so a count taken from what one
process sees differs from another's; decided from alone, the processes
drift apart (and JAX refuses the next assignment: "passed to device_put is
not the same on each process"). Counts are summed over the processes first.
"""

from __future__ import annotations

import keras
import numpy as np


def process_count() -> int:
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_count()
    return 1


def global_sum(values) -> np.ndarray:
    """`values` (float64) summed over every process: the same array on each.
    With one process, `values` as they are."""
    values = np.asarray(values, dtype="float64")
    if process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    # float64 would be cut to float32 unless JAX has x64 on: sum as float32
    # pairs (high part + remainder) to keep integer counts exact.
    high = values.astype("float32")
    low = (values - high.astype("float64")).astype("float32")
    # Shape (processes, 2, *values.shape).
    gathered = np.asarray(multihost_utils.process_allgather(np.stack([high, low])), dtype="float64")
    return gathered.sum(axis=(0, 1))
