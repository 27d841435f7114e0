"""The fence: every read of a private name of Keras, KerasHub or KerasTuner.

Nothing else in keras_regkit touches another library's private attributes
or `*.src` modules; it asks the functions of this package instead. Each
access is written for the versions in `WRITTEN_FOR`, and each has a test
(`tests/test_fence_<module>.py`) that runs it on the installed library,
names that version and fails with `moved()`'s message when an upgrade moves
what it reads: an upgrade breaks one named test, not a user's `compact`.

- `graph`: Keras' functional graph (nodes, inbound tensors, the history of
  a symbolic tensor, a Sequential's inner graph, the Functional class);
- `layers`: the sublayers a layer tracks, attention's projections, a
  layer's private copy of a constructor argument;
- `serialization`: a layer instance's own `get_config` (the save warning);
- `backend`: whether Keras traces symbolically, whether a model's compiled
  loss and metrics are built;
- `optimizers`: which optimizer is applying a step (Keras' name scopes);
- `export`: whether a layer was called (Keras' ONNX export asks);
- `hub`: KerasHub's attention sublayers and a decoder's mask;
- `tuner`: KerasTuner's objective parsing;
- `trainer`: the state Keras' JAX trainer passes through its train function;
- `data`: how `fit` reads arrays (its adapter, and the tf.data dataset it builds).
"""

from __future__ import annotations

# The releases each access below was written for and tested with.
WRITTEN_FOR = {"keras": "3.15", "keras_hub": "0.32", "keras_tuner": "1.4"}


class FenceError(RuntimeError):
    """A private name keras_regkit reads is not where it was: the installed
    library moved it."""


def moved(library: str, what: str, error: BaseException | None = None) -> FenceError:
    """The error to raise when `what` (a private name of `library`) is not
    where keras_regkit reads it."""
    import importlib

    try:
        installed = importlib.import_module(library).__version__
    except Exception:  # noqa: BLE001 - the version is for the message only
        installed = "unknown"
    return FenceError(
        f"keras_regkit reads {what}, a private part of {library} written for {library} "
        f"{WRITTEN_FOR.get(library, '?')}, and the installed {library} {installed} has moved it"
        f"{f' ({type(error).__name__}: {error})' if error else ''}. Install {library} "
        f"{WRITTEN_FOR.get(library, '')}.x, or a keras_regkit release made for {installed}."
    )
