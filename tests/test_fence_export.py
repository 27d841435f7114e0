"""The fence's reads of Keras for exporting (`keras_regkit._keras.export`):
each runs on the installed Keras and, if an upgrade moved what it reads,
fails with the message that names the version it was written for."""

import keras
import numpy as np
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import export as fence

from conftest import fenced


call = fenced


def test_was_called_turns_true_at_the_first_call():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert model.built and not call(fence.was_called, model)
    model(np.zeros((1, 3), "float32"))
    assert call(fence.was_called, model)


def test_a_moved_called_flag_names_keras_and_the_version_it_was_written_for():
    class Moved:  # as a layer of a Keras release without `_called`
        pass

    with pytest.raises(FenceError, match=rf"Layer\._called.*written for keras {WRITTEN_FOR['keras']}.*has moved it"):
        fence.was_called(Moved())
