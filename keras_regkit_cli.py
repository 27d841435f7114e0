"""The `keras-regkit` command's entry point: a fast `--help` and a quiet start-up.

It parses the arguments before Keras is imported, so `--help`, a bad
argument or an unknown command answer in a fraction of a second, then loads
TensorFlow with file descriptor 2 sent to /dev/null: TensorFlow's C++
start-up lines (absl's "log messages before InitializeLog", `cuInit`
failures on machines without a GPU) are printed by C++ straight to file
descriptor 2, before and regardless of `TF_CPP_MIN_LOG_LEVEL`, and would
come before our output. Then it hands the parsed arguments to
`keras_regkit.cli`, which runs the command.

It is a module of its own, outside the `keras_regkit` package, because
importing any module of that package first imports the package, and with it
Keras; and the package must not look at `sys.argv` or touch file
descriptors when a program imports it. `python -m keras_regkit_cli` runs it
as the console script does; `python -m keras_regkit` runs the same command
but imports Keras (and prints its start-up lines) before parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

USAGE = """`keras-regkit` command line.

    keras-regkit demo [--dataset digits|mnist1d] [--quick] [--epochs N] [--plot FILE.png]
    keras-regkit inspect PATH.keras [--json] [--plot FILE.png] [--all-weights]
    keras-regkit search [--dataset digits|mnist1d] [--penalty l1|...] [--quick] [--directory DIR] [--plot FILE.png]
    keras-regkit export PATH.keras OUT.tflite|OUT.onnx [--int8 [dynamic|auto]] [--sparse] [--check X.npy]
                        [--representative X.npy]
    keras-regkit sensitivity PATH.keras DATA.npz [--levels 0.5 0.7 0.9] [--layers GLOB] [--metric NAME]
                        [--loss NAME] [--score magnitude|wanda] [--method cut|sparsegpt] [--json] [--plot FILE.png]
"""


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed command line; exits for --help and bad arguments.

    Imports nothing heavy, so it answers before Keras loads.
    """
    parser = argparse.ArgumentParser(prog="keras-regkit", description=USAGE)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="compare penalties and the shrink phase on real data")
    demo_parser.add_argument("--dataset", choices=["digits", "mnist1d"], default="digits")
    demo_parser.add_argument("--epochs", type=_positive_int, default=30, help="training epochs per method")
    demo_parser.add_argument("--shrink-epochs", type=_positive_int, default=10, help="shrink budget per method")
    demo_parser.add_argument("--quick", action="store_true", help="a few epochs, for a smoke test")
    demo_parser.add_argument("--plot", metavar="FILE.png", help="accuracy/sparsity curves and weight histograms")
    demo_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    inspect_parser = commands.add_parser("inspect", help="per-layer sparsity table of a saved model")
    inspect_parser.add_argument("path", help="a .keras file")
    inspect_parser.add_argument("--json", action="store_true", help="machine-readable output")
    inspect_parser.add_argument("--plot", metavar="FILE.png", help="write weight-magnitude histograms")
    inspect_parser.add_argument("--all-weights", action="store_true", help="biases and every other weight too")
    inspect_parser.add_argument("--threshold", type=float, default=1e-3, help="near-zero threshold (default 1e-3)")
    inspect_parser.add_argument("--relative", action="store_true", help="threshold relative to each weight's RMS")
    search_parser = commands.add_parser("search", help="search the penalty strength: decades, then a fine grid")
    search_parser.add_argument("--dataset", choices=["digits", "mnist1d"], default="digits")
    search_parser.add_argument("--penalty", choices=["elasticnet", "l1", "l2", "expabs", "grouplasso"],
                               default="elasticnet", help="elasticnet: equal L1 and L2 strengths (default)")
    search_parser.add_argument("--low", type=_positive_float, default=1e-6, help="lowest decade (default 1e-6)")
    search_parser.add_argument("--high", type=_positive_float, default=1e-1, help="highest decade (default 1e-1)")
    search_parser.add_argument("--fine", type=_positive_int, default=5, help="fine-grid points in the best decade")
    search_parser.add_argument("--epochs", type=_positive_int, default=30, help="most epochs per trial")
    search_parser.add_argument("--patience", type=_positive_int, default=5, help="early-stopping patience")
    search_parser.add_argument("--objective", default="val_loss", help="val_loss (default), val_accuracy, ...")
    search_parser.add_argument("--shrink", type=float, metavar="SPARSITY", help="shrink every trial to this sparsity")
    search_parser.add_argument("--directory", help="keep KerasTuner's state here: a rerun resumes")
    search_parser.add_argument("--plot", metavar="FILE.png", help="write the regularization path")
    search_parser.add_argument("--json", action="store_true", help="machine-readable output")
    search_parser.add_argument("--quick", action="store_true", help="a tiny search, for a smoke test")
    search_parser.add_argument("--no-progress", action="store_true", help="no per-trial output")
    export_parser = commands.add_parser("export", help="a LiteRT or ONNX file, checked in its runtime")
    export_parser.add_argument("path", help="a .keras file")
    export_parser.add_argument("out", help="the file to write: .tflite (LiteRT) or .onnx (ONNX Runtime)")
    export_parser.add_argument("--int8", nargs="?", const=True, default=False, choices=["dynamic", "auto"],
                               help="int8 weights and activations (calibrated on inputs); "
                                    "--int8 dynamic: int8 weights, no calibration; "
                                    "--int8 auto: the faster of the two for the model in its runtime")
    export_parser.add_argument("--sparse", action="store_true", help="store mostly-zero weights sparse")
    export_parser.add_argument("--check", metavar="X.npy",
                               help="compare the runtime's outputs with Keras' on these inputs (.npy, or .npz "
                                    "keyed by input name)")
    export_parser.add_argument("--representative", metavar="X.npy",
                               help="int8 calibration inputs, as --check (default: --check's)")
    sensitivity_parser = commands.add_parser(
        "sensitivity", help="each layer pruned alone at each level: the metric drop per layer")
    sensitivity_parser.add_argument("path", help="a .keras file")
    sensitivity_parser.add_argument("data", help="a .npz file: the targets as y, the inputs as x (or by input name)")
    sensitivity_parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7, 0.9],
                                    help="sparsities in (0, 1] (default 0.5 0.7 0.9)")
    sensitivity_parser.add_argument("--layers", default="*", help="layer name glob (default: every layer)")
    sensitivity_parser.add_argument("--metric", help="the compiled metric to report (default: the first, or loss)")
    sensitivity_parser.add_argument("--loss", help="compile with this loss (a model saved uncompiled needs one)")
    sensitivity_parser.add_argument("--score", choices=["magnitude", "wanda"], default="magnitude")
    sensitivity_parser.add_argument("--method", choices=["cut", "sparsegpt"], default="cut")
    sensitivity_parser.add_argument("--batch-size", type=_positive_int, help="evaluation batch size")
    sensitivity_parser.add_argument("--json", action="store_true", help="machine-readable output")
    sensitivity_parser.add_argument("--plot", metavar="FILE.png", help="write the drops against the level")
    return parser.parse_args(argv)



def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite float > 0, got {text!r}")
    return value


@contextlib.contextmanager
def _stderr_closed():
    """Sends file descriptor 2 to /dev/null (C++ writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_backend_quietly() -> None:
    """Imports Keras (and initialises TensorFlow's devices) with file
    descriptor 2 closed, so their C++ start-up lines are not printed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_closed():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Devices are initialised on first use: the `cuInit` lines.
            tf.config.list_physical_devices()


def main(argv=None) -> int:
    """Runs `keras-regkit` with `argv` (default: the process's arguments).

    Returns:
        The exit status: 0 on success, 1 after a one-line error.
    """
    args = parse_args(argv)  # exits here for --help and bad arguments
    load_backend_quietly()
    from keras_regkit import cli

    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
