"""The benchmarks' one timing loop and one file-size measure.

Timings are interleaved: every round times each candidate once, so machine
noise (another process on the two cores) hits all alike; report medians of
the rounds, and their spread.
"""

import os
import statistics
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


def median_and_quartiles(samples):
    """The median of `samples` and their 25th and 75th percentiles."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else list(samples) * 3
    return statistics.median(samples), [q[0], q[2]]


def runtime_milliseconds(runtimes, x, repeats: int, calls: int):
    """Milliseconds per call of each runtime on `x`, one value per
    interleaved round, after 3 calls each (allocation, delegate
    preparation)."""
    rounds = interleaved_seconds([lambda runtime=runtime: runtime(x) for runtime in runtimes], repeats, calls,
                                 warmup=3)
    return [[1e3 * seconds for seconds in samples] for samples in rounds]


def saved_size(model, folder: str, name: str) -> int:
    """Bytes of the saved `.keras` file of an uncompiled copy: the
    optimizer's slots would otherwise triple a trained model's file."""
    from keras_regkit.demo import deployable_copy

    path = os.path.join(folder, f"{name}.keras")
    deployable_copy(model).save(path)
    return os.path.getsize(path)
