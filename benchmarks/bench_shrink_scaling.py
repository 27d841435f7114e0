"""How the shrink's cost over plain `fit` scales with the model (issue #41),
and what one cut costs against one train step.

A plain MLP (512 inputs, two hidden layers of width w, 10 classes, Adam
1e-3), 4,096 samples labelled by a fixed random linear teacher, batch 128,
trained one epoch so that the optimizer's second moments are set (or, with
`--encoder`, a KerasHub BERT-style encoder on random tokens). Per size,
interleaved rounds time, from that same state (weights and optimizer
slots), 4 epochs of `fit` and `shrink(sparsity=0.9, epochs=4)`
(`--mode tolerance`: `shrink(tolerance=0.01)` with 1,024 held-out samples,
given to the plain `fit` as validation data too; `--granularity unit`:
units and heads). The plain `fit` is timed warm: its train step traced
before the clock starts (the shrink's release of its zeros makes the next
`fit` trace again; that trace is not plain `fit`'s cost). The shrink's own
traces are in its time. The first round is shown apart (`first round`): it
also compiles what the process runs for the first time for these shapes
(under JAX, each eager op for each shape, and the hold's multiply): for the
first size, that is the first shrink in the process. The medians are of
the later rounds.

Then one cut from 30 % to half the entries, scored by curvature, on the
device (`Score.tensors`, the shrink's path where the weights are on an
accelerator) and on the host (NumPy scores, the shrink's path on the CPU),
and a late cut on the host (85 % to 88 %: most entries dead, as in most of
a shrink's cuts),
each with the zeros' hold it is followed by, against one train step (4
epochs of `fit` over their steps). The first step after a hold is timed
apart: under TensorFlow and PyTorch the step reads the masks live; under
JAX they ride in the optimizer's variables, which the compiled step takes
as inputs (0.6.2; before, each cut recompiled it).
The cut is timed for `--granularity weight` only.

On an accelerator the script runs as it is (Keras places the model there;
the first line names the device). Run it alone (the cores are the
benchmark), e.g. on TensorFlow, within about 8 minutes on 2 CPU cores:

    KERAS_BACKEND=tensorflow python benchmarks/bench_shrink_scaling.py --widths 256 1024 2048 --rounds 3
    KERAS_BACKEND=tensorflow python benchmarks/bench_shrink_scaling.py --widths 256 1024 --rounds 3 --mode tolerance
    KERAS_BACKEND=tensorflow python benchmarks/bench_shrink_scaling.py --widths 256 1024 --rounds 3 --granularity unit

`--cuts-only` prints, instead, the late cut on the host and one train step
(`train_on_batch`, the second after the cut) per size, medians of the
rounds: about a minute for `--widths 256 1024 2048 --rounds 7`.

`--profile` prints, instead of the table, where the shrink's time goes
against plain `fit`'s (medians over the rounds): train steps (the first,
with the first trace, apart), cuts (scores, select and zero, hold), the
start, the epoch ends, the end, the epoch starts (under TensorFlow `fit`
waits there for the last epoch's tf.data iterator to be torn down: 0 to
2.5 s at random, more often where callbacks pause the loop, in plain `fit`
too), `fit`'s end (where the last iterator is torn down), the rest (fit's
own loop and data), the ratio with and without the epoch starts and
`fit`'s end, and each run's minor page faults (first touches of memory,
slow on some virtual machines):

    KERAS_BACKEND=tensorflow python benchmarks/bench_shrink_scaling.py --widths 1024 2048 --rounds 3 --profile

`--step-hold-budget 1e10` makes the shrink hold its zeros after each step
at every size here under TensorFlow and JAX (by default the 5.27 M rows
hold them by constraints, which cost a trace or compile of the step: see
`bench_hold_per_step.py` for the line between; PyTorch's eager step holds
them by constraints anyway):

    KERAS_BACKEND=jax python benchmarks/bench_shrink_scaling.py --widths 2048 --rounds 3 --profile --step-hold-budget 1e10

Width 4200 is the ~20 M-parameter MLP (`--widths 4200 --rounds 1`: minutes
on a CPU); `--encoder 512 6` a ~20 M-parameter encoder (hidden size 512, 6
layers; an accelerator's size: `--encoder 64 1 --rounds 1` checks it runs,
in about 3 minutes on 2 CPU cores). `--widths 256 --rounds 1` checks the script runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from common.protocol import resetter

INPUTS, CLASSES, SAMPLES, VALIDATION, BATCH, EPOCHS = 512, 10, 4096, 1024, 128, 4
SEQUENCE, VOCABULARY = 32, 4096  # the encoder's inputs


def compile_model(keras, model):
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def mlp(keras, width):
    keras.utils.set_random_seed(0)
    return compile_model(keras, keras.Sequential([
        keras.Input((INPUTS,)), keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"), keras.layers.Dense(CLASSES)]))


def encoder(keras, hidden, layers):
    """A KerasHub BERT-style encoder (random weights: nothing downloaded)
    with a classification head on its pooled output."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY, num_layers=layers, num_heads=max(hidden // 64, 1), hidden_dim=hidden,
        intermediate_dim=4 * hidden, max_sequence_length=SEQUENCE)
    inputs = {"token_ids": keras.Input((SEQUENCE,), dtype="int32", name="token_ids"),
              "segment_ids": keras.Input((SEQUENCE,), dtype="int32", name="segment_ids"),
              "padding_mask": keras.Input((SEQUENCE,), dtype="int32", name="padding_mask")}
    logits = keras.layers.Dense(CLASSES, name="head")(backbone(inputs)["pooled_output"])
    return compile_model(keras, keras.Model(inputs, logits))


def mlp_data(rng, n):
    x = rng.normal(size=(n, INPUTS)).astype("float32")
    teacher = np.random.default_rng(1).normal(size=(INPUTS, CLASSES)).astype("float32")
    return x, np.argmax(x @ teacher, axis=-1).astype("int32")


def token_data(rng, n):
    tokens = rng.integers(1, VOCABULARY, size=(n, SEQUENCE)).astype("int32")
    x = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": np.ones_like(tokens)}
    return x, (tokens[:, 0] % CLASSES).astype("int32")


def take(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def cut_seconds(keras, model, reset, x, y, on_device: bool, levels=(0.3, 0.5)):
    """Seconds of one cut from `levels[0]` to `levels[1]` of the entries
    (30 % to half: the first cut's size; 85 % to 88 %: a late cut, most
    entries dead) and its hold, then of the first train step after it and
    of the second."""
    from keras_regkit.pruning import cut as cut_lib
    from keras_regkit.pruning import granularity as granularity_lib
    from keras_regkit.pruning import hold as hold_lib
    from keras_regkit.pruning import scores as scores_lib

    reset()
    granularity, score = granularity_lib.Weights(), scores_lib.Curvature()
    refs = granularity.select(model, "*")
    xb, yb = take(x, BATCH), y[:BATCH]
    def scored():
        return score.tensors(refs, model.optimizer) if on_device else scores_lib.OnHost(score, refs, model.optimizer)

    # A first cut and its hold, by the same path, before the clock starts:
    # the shrink's later cuts change the masks of holds already in the step,
    # and find the cut's own ops compiled (JAX compiles each on its first call).
    cut_lib.cut(refs, scored(), granularity, sparsity=levels[0])
    hold_lib.hold_zeros(model, [ref.variable for ref in refs])
    model.train_on_batch(xb, yb)
    start = time.perf_counter()
    scores = scored()
    cut_lib.cut(refs, scores, granularity, sparsity=levels[1])
    hold_lib.hold_zeros(model, [ref.variable for ref in refs])
    granularity.count_dead(refs)  # waits for the device
    cut = time.perf_counter() - start
    steps = []
    for _ in range(2):
        start = time.perf_counter()
        model.train_on_batch(xb, yb)
        steps.append(time.perf_counter() - start)
    hold_lib.release_zeros(model)
    return cut, steps[0], steps[1]


class BatchClock:
    """A callback that times each batch, from its begin hook to its end
    hook: listed after the shrink's phase, a batch's time includes the cut
    its end hook makes. And each epoch's start, from its begin hook to its
    first batch's: under TensorFlow, where `fit` waits for the last epoch's
    tf.data iterator to be torn down (its autotuning thread ends its sleep
    first: up to 2.5 s here), in plain `fit` too. And when training ended
    (`on_train_end`): `fit` tears the last epoch's iterator down after it."""

    def __init__(self, keras):
        class Clock(keras.callbacks.Callback):
            def on_epoch_begin(clock, epoch, logs=None):
                clock.epoch_started = time.perf_counter()

            def on_train_end(clock, logs=None):
                clock.ended = time.perf_counter()

            def on_train_batch_begin(clock, batch, logs=None):
                clock.started = time.perf_counter()
                if clock.epoch_started is not None:
                    clock.epoch_starts.append(clock.started - clock.epoch_started)
                    clock.epoch_started = None

            def on_train_batch_end(clock, batch, logs=None):
                clock.batches.append(time.perf_counter() - clock.started)

        self.callback = Clock()
        self.callback.batches, self.callback.epoch_starts, self.callback.epoch_started = [], [], None
        self.callback.ended = None


def minor_faults() -> int:
    """The process's minor page faults so far (0 where the platform does
    not count them): each a first touch of memory, which is slow on some
    virtual machines (on the 2-core one of the docs, the first 80 MB a
    process writes took 95 ms, later fresh 80 MB 4.9 ms, rewriting them
    2.4 ms)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_pieces():
    """Wraps the shrink's pieces with clocks; returns the dict of seconds
    (and call counts) they add to, per label."""
    from keras_regkit.pruning import cut as cut_lib
    from keras_regkit.pruning import hold as hold_lib
    from keras_regkit.pruning import scores as scores_lib
    from keras_regkit.shrinking.callback import ShrinkPhase

    seconds, calls = {}, {}

    def clock(owner, name, label):
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
                calls[label] = calls.get(label, 0) + 1

        setattr(owner, name, timed)

    for name, label in (("on_train_begin", "start (baseline, first cut, first snapshot)"),
                        ("on_train_batch_end", "batch hooks (decisions and cuts)"),
                        ("_cut_to", "cuts"), ("on_epoch_end", "epoch ends (snapshots, checks)"),
                        ("on_train_end", "end (final decision, refresh, release, result)")):
        clock(ShrinkPhase, name, label)
    clock(scores_lib, "for_cut", "cuts: scores")
    clock(cut_lib, "cut", "cuts: select and zero")
    clock(hold_lib.StepHold, "update", "cuts: hold (masks)")
    clock(hold_lib.ConstraintHold, "update", "cuts: hold (masks)")
    return seconds, calls


def profile(keras, rk, model, reset, x, y, validation, how, granularity, rounds):
    """Prints where a shrink's wall time goes against plain `fit`'s
    (medians over interleaved rounds)."""
    import gc

    seconds, calls = timed_pieces()
    rows = {}
    collecting = {"since": None, "seconds": 0.0}

    def collector(phase, info):  # Python's garbage collections: a pause wherever they fall
        if phase == "start":
            collecting["since"] = time.perf_counter()
        elif collecting["since"] is not None:
            collecting["seconds"] += time.perf_counter() - collecting["since"]

    gc.callbacks.append(collector)

    def add(label, value):
        rows.setdefault(label, []).append(value)

    for round_ in range(rounds + 1):  # the first round warms up, untimed
        reset()
        model.fit(take(x, BATCH), y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)  # plain step traced
        reset()
        clock = BatchClock(keras).callback
        collecting["seconds"] = 0.0
        faults, start = minor_faults(), time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=validation, verbose=0, callbacks=[clock])
        fit_total, fit_batches, fit_collecting = time.perf_counter() - start, list(clock.batches), collecting["seconds"]
        fit_faults = minor_faults() - faults
        fit_epoch_starts, fit_end = sum(clock.epoch_starts), start + fit_total - clock.ended
        reset()
        seconds.clear(), calls.clear()
        collecting["seconds"] = 0.0
        clock = BatchClock(keras).callback
        faults, start = minor_faults(), time.perf_counter()
        rk.shrink(model, x, y, validation_data=validation, epochs=EPOCHS, batch_size=BATCH, granularity=granularity,
                  callbacks=[clock], **how)
        total = time.perf_counter() - start
        shrink_faults, shrink_end = minor_faults() - faults, start + total - clock.ended
        if not round_:
            continue
        hooks = seconds.get("batch hooks (decisions and cuts)", 0.0)
        steps = sum(clock.batches) - hooks
        add("plain fit: total", fit_total)
        add("plain fit: train steps", sum(fit_batches))
        add("plain fit: epoch starts (under TensorFlow, the last iterator's teardown)", fit_epoch_starts)
        add("plain fit: end (under TensorFlow, the last iterator's teardown)", fit_end)
        add("plain fit: rest (data, epoch ends, validation)", fit_total - sum(fit_batches) - fit_epoch_starts - fit_end)
        add("plain fit: minor page faults (thousands)", fit_faults / 1e3)
        add("plain fit: median step", statistics.median(fit_batches))
        add("plain fit: garbage collections (anywhere)", fit_collecting)
        add("shrink: garbage collections (anywhere)", collecting["seconds"])
        add("shrink: total", total)
        add("shrink: train steps (batch hooks taken out)", steps)
        add("shrink: first step (traces: the hold's multiply, or the step with constraints)", clock.batches[0])
        add("shrink: median step", statistics.median(clock.batches[1:]))
        for label, value in seconds.items():
            add(f"shrink: {label} [{calls[label]} calls]", value)
        add("shrink: epoch starts (under TensorFlow, the last iterator's teardown)", sum(clock.epoch_starts))
        add("shrink: fit's end and the shrink's return (under TensorFlow, the last iterator's teardown)", shrink_end)
        add("shrink: minor page faults (thousands)", shrink_faults / 1e3)
        waits = sum(clock.epoch_starts) + shrink_end
        accounted = steps + waits + sum(v for k, v in seconds.items() if not k.startswith("cuts"))
        add("shrink: rest (fit's loop, data, validation)", total - accounted)
        add("ratio, shrink / plain fit", total / fit_total)
        add("ratio, epoch starts and ends taken out of both", (total - waits) / (fit_total - fit_epoch_starts - fit_end))
    gc.callbacks.remove(collector)
    print("| piece | median seconds | rounds |")
    print("| --- | --- | --- |")
    for label, values in rows.items():
        print(f"| {label} | {statistics.median(values):.4f} | {' '.join(f'{v:.3f}' for v in values)} |", flush=True)


def device_name(keras) -> str:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else "CPU"
    if backend == "jax":
        import jax

        return str(jax.devices()[0])
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--encoder", type=int, nargs=2, metavar=("HIDDEN", "LAYERS"),
                   help="time a KerasHub encoder of this hidden size and depth instead of the MLPs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", choices=("sparsity", "tolerance"), default="sparsity")
    p.add_argument("--granularity", default="weight")
    p.add_argument("--distill", choices=("off", "once", "in-step"), default="off",
                   help="shrink(distill=True) with the teacher's predictions computed once beside the targets "
                        "(`once`, what shrink() does with arrays) or by the teacher in every step (`in-step`, "
                        "the path for datasets, forced here)")
    p.add_argument("--cuts-only", action="store_true",
                   help="time only the late cut on the host against one train step (`train_on_batch`), "
                        "a row per size: a quick comparison of two versions of the cut")
    p.add_argument("--profile", action="store_true",
                   help="print where the shrink's time goes (train steps, cuts, start, epoch ends, end) "
                        "against plain fit's, instead of the table")
    p.add_argument("--step-hold-budget", type=float, metavar="ENTRY_STEPS",
                   help="set `pruning.hold.STEP_HOLD_BUDGET` (held entries times steps up to which the shrink "
                        "holds its zeros after each step rather than by constraints) to check the trade here")
    args = p.parse_args(argv)
    import keras

    import keras_regkit as rk

    if args.step_hold_budget is not None:
        from keras_regkit.pruning import hold as hold_lib

        hold_lib.STEP_HOLD_BUDGET = args.step_hold_budget

    rng = np.random.default_rng(0)
    sizes = [("encoder", tuple(args.encoder))] if args.encoder else [("mlp", w) for w in args.widths]
    data = token_data if args.encoder else mlp_data
    x, y = data(rng, SAMPLES)
    x_val, y_val = data(rng, VALIDATION)
    validation = (x_val, y_val) if args.mode == "tolerance" else None
    how = {"sparsity": 0.9} if args.mode == "sparsity" else {"tolerance": 0.01}
    if args.distill != "off":
        how["distill"] = True
    if args.distill == "in-step":
        from keras_regkit.shrinking import distill

        distill.with_teacher_predictions = lambda *a, **k: None
    steps = EPOCHS * (SAMPLES // BATCH)
    print(f"backend {keras.backend.backend()} on {device_name(keras)}, mode={args.mode}, distill={args.distill}, "
          f"granularity={args.granularity!r}, {args.rounds} rounds (medians)"
          + ("" if args.step_hold_budget is None else f", STEP_HOLD_BUDGET={args.step_hold_budget:g}"))
    if not (args.profile or args.cuts_only):
        print("| model | parameters | fit | shrink | ratio [range] | first round | cuts | cut on device "
              "| cut on host (NumPy) | late cut on host | train step | device cut / step | host late cut / step "
              "| first step after a cut |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, size in sizes:
        model = encoder(keras, *size) if kind == "encoder" else mlp(keras, size)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        reset = resetter(keras, model)
        cuts = []

        if args.cuts_only:
            late = [cut_seconds(keras, model, reset, x, y, False, (0.85, 0.88)) for _ in range(args.rounds)]
            late_cut, step = statistics.median(c for c, _, _ in late), statistics.median(s for _, _, s in late)
            print(f"{kind} {size}: {model.count_params() / 1e6:.2f} M parameters, late cut on host "
                  f"{late_cut * 1e3:.1f} ms, train step {step * 1e3:.1f} ms, ratio {late_cut / step:.2f}", flush=True)
            keras.backend.clear_session()
            continue

        if args.profile:
            print(f"{kind} {size}: {model.count_params() / 1e6:.2f} M parameters")
            profile(keras, rk, model, reset, x, y, validation, how, args.granularity, args.rounds)
            keras.backend.clear_session()
            continue

        def warm_fit():
            # Traced before the clock: after a shrink's release the step is rebuilt.
            reset()
            model.fit(take(x, BATCH), y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)
            reset()

        def plain():
            model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=validation, verbose=0)

        def shrink():
            result = rk.shrink(model, x, y, validation_data=validation, epochs=EPOCHS, batch_size=BATCH,
                               granularity=args.granularity, **how)
            cuts.append(result.cuts)

        fit_times, shrink_times = [], []
        for round_ in range(args.rounds + 1):  # the first round warms up, apart
            for prepare, run, out in ((warm_fit, plain, fit_times), (reset, shrink, shrink_times)):
                prepare()
                start = time.perf_counter()
                run()
                out.append(time.perf_counter() - start)
        # The first round also compiles what the process runs for the first time
        # for these shapes (JAX: each eager op, the hold's multiply): shown apart.
        first = shrink_times.pop(0) / fit_times.pop(0)
        ratios = [s / f for s, f in zip(shrink_times, fit_times)]
        step = statistics.median(fit_times) / steps
        row = (f"| {kind} {size} | {model.count_params() / 1e6:.2f} M | {statistics.median(fit_times):.2f} s "
               f"| {statistics.median(shrink_times):.2f} s | {statistics.median(ratios):.2f}x "
               f"[{min(ratios):.2f}-{max(ratios):.2f}] | {first:.2f}x | {statistics.median(cuts):.0f} |")
        if args.granularity == "weight":
            device = [cut_seconds(keras, model, reset, x, y, True) for _ in range(args.rounds)]
            host = [cut_seconds(keras, model, reset, x, y, False) for _ in range(args.rounds)]
            late = [cut_seconds(keras, model, reset, x, y, False, (0.85, 0.88)) for _ in range(args.rounds)]
            device_cut = statistics.median(c for c, _, _ in device)
            late_cut = statistics.median(c for c, _, _ in late)
            first, second = statistics.median(f for _, f, _ in device), statistics.median(s for _, _, s in device)
            row += (f" {device_cut * 1e3:.1f} ms | {statistics.median(c for c, _, _ in host) * 1e3:.1f} ms "
                    f"| {late_cut * 1e3:.1f} ms | {step * 1e3:.1f} ms | {device_cut / step:.2f} | {late_cut / step:.2f} "
                    f"| {first * 1e3:.1f} ms (next {second * 1e3:.1f} ms) |")
        else:
            row += f" - | - | - | {step * 1e3:.1f} ms | - | - | - |"
        print(row, flush=True)
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
