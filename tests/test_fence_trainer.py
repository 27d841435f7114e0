"""The fence's read of the state Keras' JAX trainer passes through its train
function (`keras_regkit._keras.trainer`): it runs on the installed Keras
and, if an upgrade moved what it reads, fails with the message that names
the version it was written for."""

import keras
import numpy as np
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import trainer as fence

from conftest import fenced


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the state is what Keras' JAX trainer passes")
def test_the_trainable_values_are_those_of_the_trainable_variables_and_replacing_them_trains_on_them():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, verbose=0)
    step, seen = model.train_function, []

    def recorded(state, iterator):
        values = fenced(fence.trainable_values, state)
        seen.append([v.shape for v in values])
        # Every trainable value zeroed before the step: what the step returns comes from zeros.
        return step(fenced(fence.with_trainable_values, state, [v * 0 for v in values]), iterator)

    model.train_function = recorded
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert seen == [[tuple(v.shape) for v in model.trainable_variables]]
    # One SGD step from zeros: the first kernel's gradient is zero (the layer after it had zero weights).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[0].kernel), 0.0)


def test_a_state_of_another_shape_names_keras_and_the_version_it_was_written_for():
    with pytest.raises(FenceError, match=rf"state tuple.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.trainable_values(([], []))
