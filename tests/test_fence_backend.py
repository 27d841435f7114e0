"""The fence's read of Keras' backend (`keras_regkit._keras.backend`): it
runs on the installed Keras and, if an upgrade moved what it reads, fails
with the message that names the version it was written for."""

import sys

import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import backend as fence

from conftest import fenced

MODULE = "keras.src.backend.common.symbolic_scope"


call = fenced


def test_in_symbolic_scope_is_false_outside_and_true_inside_keras_symbolic_scope():
    assert call(fence.in_symbolic_scope) is False
    scope = getattr(sys.modules.get(MODULE), "SymbolicScope", None)
    if scope is None:
        pytest.fail(f"written for keras {WRITTEN_FOR['keras']}: {MODULE}.SymbolicScope has moved")
    with scope():
        assert call(fence.in_symbolic_scope) is True


def test_a_moved_read_names_keras_and_the_version_it_was_written_for(monkeypatch):
    monkeypatch.setitem(sys.modules, MODULE, None)  # as if an upgrade had moved the module
    with pytest.raises(FenceError, match=rf"symbolic_scope\.in_symbolic_scope.*written for keras "
                                         rf"{WRITTEN_FOR['keras']}.*has moved it"):
        fence.in_symbolic_scope()


def test_compiled_loss_and_metrics_are_built_by_the_first_fit_not_by_compile():
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse", metrics=["mae"])
    assert call(fence.compiled_loss_and_metrics_built, model) is False
    model.fit(np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)
    assert call(fence.compiled_loss_and_metrics_built, model) is True
    model.compile("adam", "mse")  # no metrics: nothing to build but the loss
    assert call(fence.compiled_loss_and_metrics_built, model) is False


def test_a_moved_compiled_loss_names_keras_and_the_version():
    class Moved:
        pass

    with pytest.raises(FenceError, match=rf"_compile_loss.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.compiled_loss_and_metrics_built(Moved())
