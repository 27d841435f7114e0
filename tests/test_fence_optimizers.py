"""The fence's read of Keras' optimizers (`keras_regkit._keras.optimizers`):
it runs on the installed Keras and, if an upgrade moved what it reads, fails
with the message that names the version it was written for."""

import sys
import warnings

import keras
import numpy as np
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import optimizers as fence

from conftest import fenced

MODULE = "keras.src.backend.common.global_state"


class Record(keras.constraints.Constraint):
    """Records which optimizer the fence sees applying the step."""

    def __init__(self):
        self.seen = []

    def __call__(self, w):
        self.seen.append(fenced(fence.applying_optimizer))
        return w


@pytest.mark.parametrize("loss_scaled", [False, True])
def test_a_constraint_sees_the_optimizer_that_applies_the_step(loss_scaled):
    if loss_scaled and keras.backend.backend() == "jax":
        pytest.skip("Keras' LossScaleOptimizer applies statelessly under JAX (its stateful apply leaks tracers)")
    assert fenced(fence.applying_optimizer) is None
    record = Record()
    variable = keras.Variable(np.ones((2,), "float32"))
    variable.constraint = record
    inner = keras.optimizers.SGD(0.1)
    optimizer = keras.optimizers.LossScaleOptimizer(inner) if loss_scaled else inner
    optimizer.apply([keras.ops.ones((2,))], [variable])
    assert record.seen == [inner]  # the inner one of a LossScaleOptimizer, which steps
    assert fenced(fence.applying_optimizer) is None


def test_a_moved_read_names_keras_and_the_version_it_was_written_for(monkeypatch):
    monkeypatch.setitem(sys.modules, MODULE, None)  # as if an upgrade had moved the module
    with pytest.raises(FenceError, match=rf"global_state.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.applying_optimizer()


def test_variables_joined_to_an_optimizer_are_left_out_of_what_it_saves_and_loads():
    weight = keras.Variable(np.ones((2,), "float32"))
    optimizer = keras.optimizers.Adam()
    optimizer.build([weight])
    count = len(optimizer.variables)
    extra = keras.Variable(np.full((2,), 7.0, "float32"), name="extra")
    fenced(fence.own_variables, optimizer).append(extra)
    assert optimizer.variables[-1] is extra  # the list Keras' `variables` copies
    fenced(fence.save_without, [optimizer], optimizer, lambda: [extra])
    store = {}
    optimizer.save_own_variables(store)
    assert len(store) == count and optimizer.variables[-1] is extra  # saved without it, then put back
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping variable loading")
        optimizer.load_own_variables(store)  # the count matches: nothing skipped
    fence.save_all([optimizer])
    store = {}
    optimizer.save_own_variables(store)
    assert len(store) == count + 1


def test_a_moved_variables_list_names_keras_and_the_version_it_was_written_for():
    class Bare:
        pass

    with pytest.raises(FenceError, match=rf"_variables.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.own_variables(Bare())
