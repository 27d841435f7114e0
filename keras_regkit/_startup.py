"""Start-up of the `keras-regkit` command, run before the package loads Keras.

Imported first by `keras_regkit/__init__.py`. It does nothing unless this
process is the command line (`keras-regkit ...` or `python -m keras_regkit`).
Then it parses the arguments before Keras is imported, so `--help`, a bad
argument or an unknown command answer in a fraction of a second, and it
loads TensorFlow with stderr closed: TensorFlow's C++ start-up lines (absl's
"log messages before InitializeLog", `cuInit` failures on machines without a
GPU) are printed by C++ straight to file descriptor 2, before and regardless
of `TF_CPP_MIN_LOG_LEVEL`, and would come before our output.
"""

from __future__ import annotations

import contextlib
import os
import sys


def _is_command_line() -> bool:
    # The console script runs as `.../keras-regkit`. Under `python -m
    # keras_regkit`, `sys.argv[0]` is "-m" while this package is imported
    # (as for any module of it run with -m: check which one).
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name == "-m":
        command = getattr(sys, "orig_argv", [])
        return "-m" in command and command[command.index("-m") + 1 :][:1] == ["keras_regkit"]
    return name in ("keras-regkit", "keras-regkit.exe")


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


def _load_backend_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_closed():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Devices are initialised on first use: the `cuInit` lines.
            tf.config.list_physical_devices()


if _is_command_line():
    from keras_regkit import cli

    # Exits here for --help and bad arguments; Keras is not imported yet.
    cli.parse_args(sys.argv[1:])
    _load_backend_quietly()
