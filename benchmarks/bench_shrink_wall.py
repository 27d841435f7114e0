"""Wall time of a 10-epoch shrink over 10 plain epochs of `fit`, both modes,
timed interleaved in one process (run it alone: the two cores are the
benchmark).

The protocol of `bench_shrink_quality.py` (the 300-100 MLP on digits and
MNIST-1D, batch 64, the same validation data for all three): per data set a
baseline trained once, then rounds that each time, from the same weights and
optimizer state, 10 plain epochs, `shrink(sparsity=0.95)` and
`shrink(tolerance=0.01)`. Prints the median over rounds of each ratio within
a round, with its range.

Usage (repository root, project venv with mnist1d):

    python benchmarks/bench_shrink_wall.py --rounds 5 [--distill]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common.measure import interleaved_seconds
from common.protocol import BATCH_SIZE, LOADERS, SHRINK_EPOCHS, resetter, train_baseline


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    p.add_argument("--distill", action="store_true", help="also both modes with distill=True")
    args = p.parse_args(argv)
    import keras

    import keras_regkit as rk

    for name in args.datasets:
        (x, y), validation, _ = LOADERS[name]()
        model, _ = train_baseline(keras, name, x, y, *validation)
        reset = resetter(keras, model)

        def plain():
            reset()
            model.fit(x, y, batch_size=BATCH_SIZE, epochs=SHRINK_EPOCHS, validation_data=validation, verbose=0)

        def shrink(**mode):
            reset()
            rk.shrink(model, x, y, validation_data=validation, epochs=SHRINK_EPOCHS, batch_size=BATCH_SIZE, **mode)

        modes = {"sparsity=0.95": {"sparsity": 0.95}, "tolerance=0.01": {"tolerance": 0.01}}
        if args.distill:
            modes.update({f"{label}, distill=True": {**mode, "distill": True} for label, mode in list(modes.items())})
        rounds = interleaved_seconds([plain] + [lambda mode=mode: shrink(**mode) for mode in modes.values()],
                                     repeats=args.rounds, calls=1)
        for label, times in zip(modes, rounds[1:]):
            ratios = [t / base for t, base in zip(times, rounds[0])]
            print(f"{name}: shrink({label}) / 10 plain epochs: median {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}] (plain {statistics.median(rounds[0]):.2f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
