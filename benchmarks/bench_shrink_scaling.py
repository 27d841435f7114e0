"""How the shrink's cost over plain `fit` scales with the model (issue #41),
and what one cut costs against one train step.

A plain MLP (512 inputs, two hidden layers of width w, 10 classes, Adam
1e-3), 4,096 random samples, batch 128, trained one epoch so that the
optimizer's second moments are set. Per width, interleaved rounds time,
from that same state (weights and optimizer slots), 4 epochs of `fit` and
`shrink(sparsity=0.9, epochs=4)` (or `--granularity unit`). Then one cut
from 30 % to half the entries, scored by curvature, on the device (`Score.tensors`, the
shrink's path) and on the host (NumPy scores, the reference), each with the
zeros' hold it is followed by, against one train step (4 epochs of `fit`
over their steps). The first step after a hold is timed apart: under JAX
the masks are constants of the compiled step, so a cut costs a retrace
there; under TensorFlow and PyTorch the step reads them live.

Run it alone (the cores are the benchmark), e.g. on TensorFlow:

    KERAS_BACKEND=tensorflow python benchmarks/bench_shrink_scaling.py --rounds 5

Width 4200 is the ~20 M-parameter model; `--widths 256 --rounds 1` checks it runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from common.measure import interleaved_seconds
from common.protocol import resetter

INPUTS, CLASSES, SAMPLES, BATCH, EPOCHS = 512, 10, 4096, 128, 4


def build(keras, width):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(width, activation="relu"), keras.layers.Dense(CLASSES)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def cut_seconds(keras, model, reset, on_device: bool):
    """Seconds of one cut from 30 % to half the entries and its hold, then
    of the first train step after it and of the second."""
    from keras_regkit.pruning import cut as cut_lib
    from keras_regkit.pruning import granularity as granularity_lib
    from keras_regkit.pruning import hold as hold_lib
    from keras_regkit.pruning import scores as scores_lib

    reset()
    granularity, score = granularity_lib.Weights(), scores_lib.Curvature()
    refs = granularity.select(model, "*")
    xb = np.zeros((BATCH, INPUTS), "float32")
    yb = np.zeros((BATCH,), "int32")
    # A first cut and its hold, traced before the clock starts: the shrink's
    # later cuts change the masks of holds already in the step.
    cut_lib.cut(refs, score.scores(refs, model.optimizer), granularity, sparsity=0.3)
    hold_lib.hold_zeros(model, [ref.variable for ref in refs])
    model.train_on_batch(xb, yb)
    start = time.perf_counter()
    scores = score.tensors(refs, model.optimizer) if on_device else score.scores(refs, model.optimizer)
    cut_lib.cut(refs, scores, granularity, sparsity=0.5)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048, 4200])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--granularity", default="weight")
    args = p.parse_args(argv)
    import keras

    import keras_regkit as rk

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, INPUTS)).astype("float32")
    y = rng.integers(0, CLASSES, SAMPLES).astype("int32")
    steps = EPOCHS * (SAMPLES // BATCH)
    print(f"backend {keras.backend.backend()}, granularity={args.granularity!r}, {args.rounds} rounds (medians)")
    print("| width | parameters | fit | shrink | ratio [range] | cut on device | cut on host (NumPy) "
          "| train step | device cut / step | first step after a cut |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for width in args.widths:
        model = build(keras, width)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        reset = resetter(keras, model)

        def plain():
            reset()
            model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)

        def shrink():
            reset()
            rk.shrink(model, x, y, sparsity=0.9, epochs=EPOCHS, batch_size=BATCH, granularity=args.granularity)

        fit_times, shrink_times = interleaved_seconds([plain, shrink], repeats=args.rounds, calls=1)
        ratios = [s / f for s, f in zip(shrink_times, fit_times)]
        device = [cut_seconds(keras, model, reset, True) for _ in range(args.rounds)]
        host = [cut_seconds(keras, model, reset, False) for _ in range(args.rounds)]
        step = statistics.median(fit_times) / steps
        device_cut = statistics.median(c for c, _, _ in device)
        first, second = statistics.median(f for _, f, _ in device), statistics.median(s for _, _, s in device)
        print(f"| {width} | {model.count_params() / 1e6:.2f} M | {statistics.median(fit_times):.2f} s "
              f"| {statistics.median(shrink_times):.2f} s | {statistics.median(ratios):.2f}x "
              f"[{min(ratios):.2f}-{max(ratios):.2f}] | {device_cut * 1e3:.1f} ms "
              f"| {statistics.median(c for c, _, _ in host) * 1e3:.1f} ms | {step * 1e3:.1f} ms "
              f"| {device_cut / step:.2f} | {first * 1e3:.1f} ms (next {second * 1e3:.1f} ms) |", flush=True)
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
