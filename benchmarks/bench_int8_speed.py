"""Is full int8 faster than float in LiteRT on this CPU, and at what input
size? The question behind #43's latency target (a compacted full-int8
MobileNetV2 at least 2x faster at batch 1 than its dense float file).

`MobileNetV2(alpha=0.35)` at each `--sizes` input side, weights as
initialised (latency depends on the shapes, not on the values): the dense
model and a copy with half the units of every prunable layer cut
(`prune(sparsity=0.5, granularity="unit")`, then `compact`), each exported
float, full int8 (calibrated on 32 random images) and dynamic int8. Every
file runs in LiteRT with one thread (XNNPACK, as `keras_regkit.deploy`
runs it) at batch 1, timed in interleaved rounds; times are against the
dense float file of the same size. The CPU's SIMD extensions are printed:
int8 convolutions gain most where the CPU has 8-bit dot products
(AVX-VNNI / AVX512-VNNI on x86, the dot-product extension on ARM).

    nice -n 10 python benchmarks/bench_int8_speed.py --export-only   # writes the files
    python benchmarks/bench_int8_speed.py --json benchmarks/results/int8_speed.json   # quiet machine
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import numpy as np

from common.measure import runtime_milliseconds
from common.reporting import write_json

FILES = ("dense_float", "dense_int8", "dense_dynamic", "compact_float", "compact_int8", "compact_dynamic")
MODES = {"float": False, "int8": True, "dynamic": "dynamic"}


def simd_flags() -> list[str]:
    """The CPU's vector extensions that matter for int8 (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith(("flags", "Features"))).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "fma", "asimd")) or "vnni" in f or f in ("dotprod", "i8mm"))


def export_size(args, keras, rk, size) -> None:
    images = np.random.default_rng(0).uniform(0, 1, (32, size, size, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    dense = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(size, size, 3), classes=10)
    pruned = keras.models.clone_model(dense)
    pruned.set_weights(dense.get_weights())
    rk.prune(pruned, sparsity=0.5, granularity="unit")
    for name, model in (("dense", dense), ("compact", rk.compact(pruned).model)):
        for mode, int8 in MODES.items():
            rk.export(model, path(args, size, f"{name}_{mode}"), int8=int8,
                      representative_data=images if int8 is True else None)
    print(f"size {size}: exported", flush=True)


def path(args, size, name) -> str:
    return os.path.join(args.files, f"s{size}_{name}.tflite")


def time_size(args, rk, size) -> dict:
    image = np.random.default_rng(1).uniform(0, 1, (1, size, size, 3)).astype("float32")
    runtimes = [rk.deploy.Runtime(path(args, size, name), num_threads=1) for name in FILES]
    calls = max(3, int(args.calls * (64 / size) ** 2))
    rounds = runtime_milliseconds(runtimes, image, args.repeats, calls)
    ms = {name: statistics.median(r) for name, r in zip(FILES, rounds)}
    row = {"size": size, "ms": ms, "speedup_vs_dense_float": {n: ms["dense_float"] / v for n, v in ms.items()},
           "kib": {n: os.path.getsize(path(args, size, n)) / 1024 for n in FILES}}
    print(f"size {size}: " + ", ".join(f"{n} {ms[n]:.3f} ms ({row['speedup_vs_dense_float'][n]:.2f}x)"
                                         for n in FILES), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--files", default="/tmp/keras_regkit_int8_speed")
    parser.add_argument("--export-only", action="store_true", help="write the files; time them later")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=100, help="calls per file per round at size 64 (fewer above)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    import keras

    import keras_regkit as rk

    os.makedirs(args.files, exist_ok=True)
    for size in args.sizes:
        if not all(os.path.exists(path(args, size, name)) for name in FILES):
            export_size(args, keras, rk, size)
    if args.export_only:
        return
    flags = simd_flags()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, SIMD: {' '.join(flags)}; "
          f"load {os.getloadavg()[0]:.1f}")
    rows = [time_size(args, rk, size) for size in args.sizes]
    if args.json:
        write_json(args.json, {"settings": vars(args), "simd": flags, "load_at_start": os.getloadavg()[0],
                               "rows": rows})


if __name__ == "__main__":
    main()
