"""The benchmarks' one timing loop and one file-size measure.

Timings are interleaved: every round times each candidate once, so machine
noise (another process on the two cores) hits all alike; report medians of
the rounds, and their spread.
"""

import os
import time


def interleaved_seconds(functions, repeats: int, calls: int, warmup: int = 1):
    """Seconds per call of each zero-argument function, one value per round
    (`repeats` rounds of `calls` calls each), after `warmup` calls each (for
    tracing). Returns one list per function."""
    for function in functions:
        for _ in range(warmup):
            function()
    rounds = [[] for _ in functions]
    for _ in range(repeats):
        for function, out in zip(functions, rounds):
            start = time.perf_counter()
            for _ in range(calls):
                function()
            out.append((time.perf_counter() - start) / calls)
    return rounds


def saved_size(model, folder: str, name: str) -> int:
    """Bytes of the saved `.keras` file of an uncompiled copy: the
    optimizer's slots would otherwise triple a trained model's file."""
    from keras_regkit.demo import deployable_copy

    path = os.path.join(folder, f"{name}.keras")
    deployable_copy(model).save(path)
    return os.path.getsize(path)
