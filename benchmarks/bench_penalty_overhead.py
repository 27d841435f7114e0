"""Train-step overhead of keras_regkit's penalties vs `keras.regularizers.L1L2`.

Trains an MLP 784-2048-1024-10 (about 3.7M parameters, every Dense kernel
regularized) with `model.fit` on synthetic data, once per penalty
configuration, all in one process, and prints the median time per train step
of each configuration and its ratio to the L1L2 baseline. The target from the
issue is a ratio <= 1.05 for every penalty. Nothing here asserts on timing.

How it measures:

- Every model is built and compiled once (same seed, same data pipeline) and
  warmed up with two short `fit` calls (one with --quick): the first traces
  the train function (and lets `RegularizationScheduler` bind the schedules
  to `optimizer.iterations`, which rebuilds the train function once), the
  second runs the traced function.
- Then `--repeats` rounds; in each round every configuration runs
  `fit(steps_per_epoch=--steps, epochs=1, verbose=0)` once. The order is
  rotated every round, so drift of a shared machine hits every configuration
  alike and each round's runs sit close together in time.
- "ms/step" is the time from `on_epoch_begin` to `on_epoch_end` (a timing
  callback placed first in the list, so the scheduler's own end-of-epoch work
  is not in it) divided by the steps. "fit ms/step" is the wall time of the
  whole `fit` call divided by the steps: it adds the per-call overhead
  (iterator, callbacks, the scheduler's `reg_loss` / strength logging).
- "ratio" is the median of a configuration over the median of L1L2;
  "paired" is the median over rounds of (configuration / L1L2 of the same
  round), which is less sensitive to slow drift; "min ratio" compares the
  fastest rounds (other load on the machine only ever adds time).
- A second table times the penalty alone (value + gradient w.r.t. the three
  kernels, in a `tf.function`), which shows what each penalty costs without
  the noise of the rest of the step.

Usage:

    python benchmarks/bench_penalty_overhead.py             # ~4 min on 2 cores
    python benchmarks/bench_penalty_overhead.py --quick     # smoke run, < 40 s (rough figures)
    python benchmarks/bench_penalty_overhead.py --steps 20 --repeats 15 --jit-compile true
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import statistics
import sys
import time

import common  # noqa: F401  (before TensorFlow: this checkout's keras_regkit, TensorFlow quiet)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

import keras_regkit  # noqa: E402
from keras_regkit import regularizers as rk  # noqa: E402
from keras_regkit.callbacks import RegularizationScheduler  # noqa: E402
from keras_regkit.schedules import DelayedRamp  # noqa: E402

PolynomialDecay = keras.optimizers.schedules.PolynomialDecay
_UPDATE_FREQ = "epoch" if keras.backend.backend() == "jax" else "batch"

BASELINE = "keras L1L2"
REFERENCE = "no penalty"
HIDDEN = (2048, 1024)
INPUTS, CLASSES = 784, 10
STRENGTH = 1e-5


FLOOR = "floor: sum(expm1|w|)"


def _exp_floor(x):
    return STRENGTH * keras.ops.sum(keras.ops.expm1(keras.ops.abs(keras.ops.cast(x, "float32"))))


def _ramp():
    return PolynomialDecay(0.0, 1000, STRENGTH)


def _float32(regularizer):
    # Keras' L1L2 returns a float16/bfloat16 scalar for such a variable, which
    # Keras' own loss sum then refuses; cast it (free, on a scalar).
    return lambda x: keras.ops.cast(regularizer(x), "float32")


# name -> (factory of one regularizer (called once per kernel), scheduled?)
CONFIGS = {
    REFERENCE: (lambda: None, False),
    BASELINE: (lambda: _float32(keras.regularizers.L1L2(l1=STRENGTH, l2=STRENGTH)), False),
    "rk L1": (lambda: rk.L1(STRENGTH), False),
    "rk L2": (lambda: rk.L2(STRENGTH), False),
    "rk ElasticNet": (lambda: rk.ElasticNet(STRENGTH, STRENGTH), False),
    "rk ExpAbs": (lambda: rk.ExpAbs(STRENGTH), False),
    # The floor of any exponential penalty: one read of the weight, one expm1
    # per entry, autodiff's gradient, none of ExpAbs' guards (#41).
    FLOOR: (lambda: _exp_floor, False),
    "rk GroupLasso": (lambda: rk.GroupLasso(STRENGTH), False),
    "rk L1(PolyDecay)": (lambda: rk.L1(_ramp()), True),
    "rk ElasticNet(PolyDecay, DelayedRamp)": (
        lambda: rk.ElasticNet(_ramp(), DelayedRamp(STRENGTH, 10, 100)),
        True,
    ),
    "rk ExpAbs(DelayedRamp)": (lambda: rk.ExpAbs(DelayedRamp(STRENGTH, 10, 100)), True),
}


class _EpochTimer(keras.callbacks.Callback):
    """Times the step loop of a one-epoch `fit` (epoch begin -> epoch end)."""

    def __init__(self):
        super().__init__()
        self.seconds = None
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # `CallbackList` has already turned the logs into Python floats here,
        # so every step of the epoch has finished.
        self.seconds = time.perf_counter() - self._start


class _Run:
    def __init__(self, name, factory, scheduled, dataset, batch_size, optimizer, seed,
                 jit_compile="auto", dtype=None):
        self.name = name
        self.scheduled = scheduled
        self.dataset = dataset
        keras.utils.set_random_seed(seed)
        layers = [keras.Input((INPUTS,))]
        for width in HIDDEN:
            layers.append(
                keras.layers.Dense(
                    width, activation="relu", kernel_regularizer=factory(), dtype=dtype
                )
            )
        layers.append(keras.layers.Dense(CLASSES, kernel_regularizer=factory(), dtype=dtype))
        self.model = keras.Sequential(layers, name=re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_"))
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        self.timer = _EpochTimer()
        self.callbacks = [self.timer]
        if scheduled:
            # JAX's compiled step cannot follow the optimizer's counter.
            self.callbacks.append(RegularizationScheduler(update_freq=_UPDATE_FREQ))
        self.loop_ms = []  # per round, ms per step, epoch loop only
        self.fit_ms = []  # per round, ms per step, whole fit call
        self.train_function = None
        self.params = self.model.count_params()

    def fit(self, steps):
        start = time.perf_counter()
        self.model.fit(
            self.dataset,
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=self.callbacks,
        )
        return time.perf_counter() - start

    def warm_up(self, steps, fits=2):
        self.fit(steps)  # traces (and, when scheduled, binds + rebuilds once)
        for _ in range(fits - 1):
            self.fit(steps)  # runs the traced function with a fresh iterator
        self.train_function = self.model.train_function
        self.traces = _tracing_count(self.train_function)

    def measure(self, steps):
        wall = self.fit(steps)
        self.loop_ms.append(self.timer.seconds / steps * 1e3)
        self.fit_ms.append(wall / steps * 1e3)

    def check(self):
        """Problems that would make the timings meaningless (not timing)."""
        problems = []
        if self.model.train_function is not self.train_function:
            problems.append("train function was rebuilt during the timed runs")
        elif _tracing_count(self.train_function) != self.traces:
            problems.append("train function was retraced during the timed runs")
        if self.scheduled and _UPDATE_FREQ == "batch":
            iterations = self.model.optimizer.iterations
            for layer in self.model.layers:
                reg = layer.kernel_regularizer
                counter = getattr(reg, "step_counter", iterations)
                if reg is not None and counter is not iterations:
                    problems.append(f"{layer.name}: schedule not bound to iterations")
        return problems

    def penalty_fn(self):
        variables = [v for v in self.model.trainable_variables if v.regularizer is not None]

        # No autograph: it re-reads the source, which may have changed since import.
        @tf.function(jit_compile=bool(self.model.jit_compile), autograph=False)
        def value_and_grad():
            with tf.GradientTape() as tape:
                total = tf.add_n([tf.cast(v.regularizer(v), "float32") for v in variables])
            return total, tape.gradient(total, variables)

        return value_and_grad


def _tracing_count(function):
    """Traces so far of the `tf.function` inside Keras' train function (None
    if this Keras version hides it elsewhere)."""
    for cell in getattr(function, "__closure__", None) or ():
        try:
            contents = cell.cell_contents
        except ValueError:
            continue
        if hasattr(contents, "experimental_get_tracing_count"):
            return contents.experimental_get_tracing_count()
    return None


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def _machine_line():
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = ",".join(sorted({d.device_type for d in tf.config.list_physical_devices()}))
    return (
        f"machine: {cpu_model}, cpu_count={os.cpu_count()} (usable {usable}), "
        f"devices={devices} | python {platform.python_version()}, "
        f"tensorflow {tf.__version__}, keras {keras.__version__} "
        f"(backend {keras.backend.backend()}), numpy {np.__version__}, "
        f"keras_regkit {keras_regkit.__version__}"
    )


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="train steps per timed fit call (default 12; quick 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds over all configs (default 10; quick 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 40 s on 2 cores); figures are rough")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="adam", help="e.g. adam, sgd")
    parser.add_argument("--no-reference", action="store_true",
                        help=f"skip the '{REFERENCE}' reference row (--quick does)")
    parser.add_argument("--penalty-calls", type=int, default=None,
                        help="calls per config in the penalty-only table "
                        "(default 20; quick 3; 0 skips it)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"),
                        default="auto",
                        help="compile(jit_compile=...); 'auto' is Keras' default "
                        "(XLA on GPU, none on CPU-only machines)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        default="float32",
                        help="dtype of every layer (its variables too), the "
                        "baseline's included")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 12
    if args.repeats is None:
        args.repeats = 2 if args.quick else 10
    if args.quick:
        args.no_reference = True
    if args.penalty_calls is None:
        args.penalty_calls = 3 if args.quick else 20
    if args.steps < 1 or args.repeats < 1 or args.penalty_calls < 0:
        parser.error("--steps and --repeats must be >= 1, --penalty-calls >= 0")
    return args


def main(argv=None):
    args = _parse_args(argv)
    # Tracing one train function per configuration makes TF warn about
    # "frequent retracing" (it counts across models). Real retracing during
    # the timed runs is checked directly (see `_Run.check`).
    tf.get_logger().setLevel("ERROR")
    t0 = time.perf_counter()
    print(_machine_line())

    rng = np.random.default_rng(args.seed)
    n = args.batch_size * 32
    x = rng.standard_normal((n, INPUTS), dtype=np.float32)
    y = rng.integers(0, CLASSES, size=(n,), dtype=np.int64)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(args.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(1)
    )

    names = [k for k in CONFIGS if not (args.no_reference and k == REFERENCE)]
    runs = []
    for name in names:
        factory, scheduled = CONFIGS[name]
        jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
        run = _Run(
            name, factory, scheduled, dataset, args.batch_size, args.optimizer, args.seed, jit,
            args.dtype,
        )
        run.warm_up(steps=1 if args.quick else 2, fits=1 if args.quick else 2)
        runs.append(run)
    model0 = runs[0].model
    print(
        f"model: MLP {INPUTS}-{'-'.join(map(str, HIDDEN))}-{CLASSES}, "
        f"{runs[0].params:,} params, batch {args.batch_size}, optimizer "
        f"{args.optimizer}, dtype {args.dtype}, jit_compile={model0.jit_compile}, "
        f"intra/inter-op threads={tf.config.threading.get_intra_op_parallelism_threads()}/"
        f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default)"
    )
    print(
        f"timing: {len(runs)} configs x {args.repeats} rounds x {args.steps} steps, "
        f"round-robin with rotated order; setup+warm-up took "
        f"{time.perf_counter() - t0:.1f} s"
    )
    sys.stdout.flush()

    for r in range(args.repeats):
        shift = r % len(runs)
        for run in runs[shift:] + runs[:shift]:
            gc.collect()
            run.measure(args.steps)

    base = next(run for run in runs if run.name == BASELINE)
    base_median = statistics.median(base.loop_ms)
    base_min = min(base.loop_ms)
    rows = []
    for run in runs:
        med = statistics.median(run.loop_ms)
        pairs = [a / b for a, b in zip(run.loop_ms, base.loop_ms)]
        paired = statistics.median(pairs)
        rows.append(
            (
                run.name,
                f"{med:.2f}",
                f"{_percentile(run.loop_ms, 25):.1f}-{_percentile(run.loop_ms, 75):.1f}",
                f"{med / base_median:.3f}",
                f"{paired:.3f}",
                f"{_percentile(pairs, 25):.2f}-{_percentile(pairs, 75):.2f}",
                f"{min(run.loop_ms):.2f}",
                f"{min(run.loop_ms) / base_min:.3f}",
                f"{statistics.median(run.fit_ms):.2f}",
            )
        )
    headers = (
        "config", "ms/step", "p25-p75", "ratio", "paired", "paired p25-p75", "min",
        "min ratio",
        "fit ms/step",
    )
    _print_table(headers, rows)
    print(
        "ms/step: median over rounds of (epoch loop time / steps); ratio: "
        f"median / median of '{BASELINE}'; paired: median over rounds of "
        f"(config / '{BASELINE}' in the same round), with its spread; min, min ratio: the "
        "fastest round (CPU contention only adds time, so this is the least "
        "disturbed figure); fit ms/step: whole fit() call / steps, median "
        "(adds per-call overhead). Target: ratio <= 1.05."
    )

    if args.penalty_calls and keras.backend.backend() == "tensorflow":
        print()
        print(f"penalty alone (value + gradient of the 3 kernels, tf.function, "
              f"median of {args.penalty_calls} calls, same rotation):")
        penalized = [run for run in runs if run.name != REFERENCE]
        fns = {}
        for run in penalized:
            fns[run.name] = run.penalty_fn()
            for _ in range(2):  # trace + one warm call
                _sync(fns[run.name]())
        times = {run.name: [] for run in penalized}
        for c in range(args.penalty_calls):
            shift = c % len(penalized)
            for run in penalized[shift:] + penalized[:shift]:
                start = time.perf_counter()
                _sync(fns[run.name]())
                times[run.name].append((time.perf_counter() - start) * 1e3)
        base_pen = statistics.median(times[BASELINE])
        none_step = (
            statistics.median(runs[names.index(REFERENCE)].loop_ms)
            if REFERENCE in names else None
        )
        prow = []
        for run in penalized:
            med = statistics.median(times[run.name])
            prow.append(
                (
                    run.name,
                    f"{med:.2f}",
                    f"{med / base_pen:.2f}",
                    f"{100 * med / none_step:.1f}%" if none_step else "n/a",
                )
            )
        _print_table(("config", "ms/call", "vs L1L2", f"of '{REFERENCE}' step"), prow)

    problems = [f"{run.name}: {p}" for run in runs for p in run.check()]
    for p in problems:
        print("WARNING:", p)
    print(f"total time {time.perf_counter() - t0:.1f} s")


def _sync(result):
    # Eager calls of a tf.function return once it has run; the gradients are
    # outputs, so they are computed. Reading the scalar is enough (copying the
    # gradients to NumPy would add a memory copy to every figure).
    total, _ = result
    total.numpy()


def _print_table(headers, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    fmt = "  ".join(
        ("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths)
    )
    print(fmt.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(fmt.format(*row))


if __name__ == "__main__":
    main()
