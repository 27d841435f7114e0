"""What holding zeros costs per train step, each way the shrink holds them
(issue #41; `keras_regkit.pruning.hold.STEP_HOLD_BUDGET` is read from it).

The MLP of `bench_shrink_scaling.py` (512 inputs, two hidden layers of width
w, Adam, 4,096 samples, batch 128), trained one epoch, 90 % of each kernel's
entries zeroed. Interleaved rounds time 4 epochs of `fit` (128 steps), every
function traced or compiled before the clock starts:

- plain: no hold;
- constraint: `HoldZeros` constraints, the multiply inside the step;
- after the step: `StepHold`, the multiply after each call of the step.

It prints each hold's extra milliseconds per step over plain `fit` (medians
of the rounds), and the steps after which the after-step hold has cost as
much as `--trace` seconds (the one trace or compile of the step that the
constraints cost; the scaling benchmark's profile gives it:
`bench_shrink_scaling.py --profile`, the first step). Run it alone, e.g.

    KERAS_BACKEND=jax python benchmarks/bench_hold_per_step.py --widths 256 1024 2048 --rounds 5

`--shrinks` times whole shrinks instead (`shrink(sparsity=0.9, epochs=4)`,
each run from the trained state: weights and optimizer slots put back),
each way in one process: plain `fit`, the shrink holding by constraints
(`STEP_HOLD_BUDGET` 0) and holding after each step (budget unbounded), in
rotated rounds, each run after a one-batch `fit` that compiles the plain
step (as a user's own `fit` has before a shrink: a constraint hold's
release makes Keras compile it again), seconds and ratios over plain `fit`:

    KERAS_BACKEND=jax python benchmarks/bench_hold_per_step.py --widths 2048 --rounds 8 --shrinks
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SAMPLES, INPUTS, CLASSES, BATCH, EPOCHS = 4096, 512, 10, 128, 4


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(SAMPLES, INPUTS)).astype("float32"), rng.integers(0, CLASSES, SAMPLES)


def trained_mlp(keras, width, x, y):
    """The MLP of width `width`, trained one epoch (the optimizer's moments set)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(width, activation="relu"), keras.layers.Dense(CLASSES)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trace", type=float, default=0.2, help="seconds of the step's trace the constraints cost")
    parser.add_argument("--shrinks", action="store_true", help="time whole shrinks with each hold instead")
    args = parser.parse_args()
    if args.shrinks:
        return whole_shrinks(args)

    import keras

    from keras_regkit.pruning import hold as hold_lib

    x, y = data()
    steps = EPOCHS * SAMPLES // BATCH

    print(f"backend {keras.backend.backend()}, {args.rounds} rounds (medians), {steps} steps a fit")
    print("| width | held entries | plain fit | constraint, ms/step | after the step, ms/step "
          f"| after-step hold = a {args.trace} s trace at |")
    print("| --- | --- | --- | --- | --- | --- |")
    for width in args.widths:
        model = trained_mlp(keras, width, x, y)
        kernels = [layer.kernel for layer in model.layers]
        for kernel in kernels:
            value = keras.ops.convert_to_numpy(kernel).copy()
            value[np.abs(value) < np.quantile(np.abs(value), 0.9)] = 0.0
            kernel.assign(value)
        plain = model.train_function
        hold_lib.hold_zeros(model, kernels)  # constraints: the step traced (compiled) again with them
        model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0)
        constrained = model.train_function
        after = hold_lib.StepHold(model, kernels)

        def timed(function, callbacks=()):
            model.train_function = function
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=list(callbacks))
            seconds = time.perf_counter() - start
            after.release()
            return seconds

        # Under JAX the constraints' masks ride in the optimizer's variables: they are
        # taken out for the other two ways (each compiled step is reused for its own state).
        # Under TensorFlow the constrained step keeps reading the first masks it was traced
        # with (the same values): the later holds' new masks go unread, the work is the same.
        def held_by_constraints():
            hold_lib.hold_zeros(model, kernels)
            try:
                return timed(constrained)
            finally:
                hold_lib.release_zeros(model)

        def held_after_the_step():
            after.update()
            return timed(plain, [after.callback()])

        ways = {"plain": lambda: timed(plain), "constraint": held_by_constraints, "after": held_after_the_step}
        hold_lib.release_zeros(model)
        for way in ways.values():
            way()  # every function traced or compiled
        seconds = {name: [] for name in ways}
        for round_ in range(args.rounds):
            order = list(ways)[round_ % 3:] + list(ways)[:round_ % 3]  # each way first as often
            for name in order:
                seconds[name].append(ways[name]())
        median = {name: statistics.median(values) for name, values in seconds.items()}
        extra = {name: (median[name] - median["plain"]) / steps * 1e3 for name in ("constraint", "after")}
        over = extra["after"] - extra["constraint"]
        even = f"{args.trace / (over / 1e3):.0f} steps" if over > 0 else "never"
        entries = sum(int(np.prod(k.shape)) for k in kernels)
        print(f"| {width} | {entries / 1e6:.2f} M | {median['plain']:.2f} s | {extra['constraint']:+.2f} "
              f"| {extra['after']:+.2f} | {even} |", flush=True)


def whole_shrinks(args):
    import keras

    import keras_regkit as rk
    from common.protocol import resetter
    from keras_regkit.pruning import hold as hold_lib

    x, y = data()
    print(f"backend {keras.backend.backend()}, {args.rounds} rounds (medians [range]), whole shrinks")
    print("| width | parameters | plain fit | shrink, constraints | shrink, after each step |")
    print("| --- | --- | --- | --- | --- |")
    for width in args.widths:
        model = trained_mlp(keras, width, x, y)
        reset = resetter(keras, model)

        def run(budget):  # None: plain `fit`
            model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0)  # the plain step compiled
            reset()
            start = time.perf_counter()
            if budget is None:
                model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
            else:
                hold_lib.STEP_HOLD_BUDGET = budget
                rk.shrink(model, x, y, sparsity=0.9, epochs=EPOCHS, batch_size=BATCH, verbose=0)
            return time.perf_counter() - start

        ways = {"plain": None, "constraints": 0.0, "after": float("inf")}
        seconds = {name: [] for name in ways}
        default = hold_lib.STEP_HOLD_BUDGET
        try:
            for round_ in range(args.rounds + 1):  # the first round warms up, untimed
                for name in list(ways)[round_ % 3:] + list(ways)[:round_ % 3]:
                    spent = run(ways[name])
                    if round_:
                        seconds[name].append(spent)
        finally:
            hold_lib.STEP_HOLD_BUDGET = default
        plain = statistics.median(seconds["plain"])

        def cell(name):
            values = seconds[name]
            ratio = "" if name == "plain" else f", {statistics.median(values) / plain:.2f}x"
            return f"{statistics.median(values):.2f} s [{min(values):.2f}-{max(values):.2f}]{ratio}"

        print(f"| {width} | {model.count_params() / 1e6:.2f} M | {cell('plain')} | {cell('constraints')} "
              f"| {cell('after')} |", flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
