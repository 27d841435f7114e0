"""The fence's read of how Keras' `fit` reads arrays
(`keras_regkit._keras.data`): it runs on the installed Keras and, if an
upgrade moved what it reads, fails with the message that names the version
it was written for."""

import sys

import keras
import numpy as np
import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import data as fence

from conftest import fenced

tf = pytest.importorskip("tensorflow", reason="the dataset is tf.data's; installed with the package")

MODULE = "keras.src.trainers.data_adapters.array_data_adapter"


def test_the_dataset_of_arrays_is_fits_batches_of_every_sample_once_shuffled():
    x = np.arange(10, dtype="float32")[:, None]
    y, weight = np.arange(10) * 10, np.arange(10, dtype="float32") / 10
    keras.utils.set_random_seed(0)
    dataset, batches = fenced(fence.array_dataset, x, y, weight, 4)
    assert batches == 3
    epoch = [tuple(np.asarray(part) for part in batch) for batch in dataset]
    assert [len(b[0]) for b in epoch] == [4, 4, 2]  # fit's batches, the last one partial
    seen = np.concatenate([b[0][:, 0] for b in epoch]).astype(int)
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))  # every sample once, shuffled
    np.testing.assert_array_equal(np.concatenate([b[1] for b in epoch]), seen * 10)  # targets with their inputs
    np.testing.assert_allclose(np.concatenate([b[2] for b in epoch]), seen / 10)  # and their sample weights
    if keras.backend.backend() == "tensorflow":  # elsewhere fit reads arrays without tf.data
        assert [b[0][:, 0].astype(int).tolist() for b in epoch] == batches_fit_reads(x, y, weight, 4)


def batches_fit_reads(x, y, weight, batch_size):
    """The inputs of each batch of one epoch of `fit` on arrays, from the
    same global seed."""
    seen = []

    class Recording(keras.Model):
        def train_step(self, data):
            seen.append(np.asarray(data[0])[:, 0].astype(int).tolist())
            return super().train_step(data)

    inputs = keras.Input((1,))
    model = Recording(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse", run_eagerly=True)
    keras.utils.set_random_seed(0)
    model.fit(x, y.astype("float32"), sample_weight=weight, batch_size=batch_size, epochs=1, verbose=0)
    return seen


def test_what_fit_would_not_read_as_arrays_is_none_and_not_read():
    def generator():
        raise AssertionError("read")
        yield

    dataset = tf.data.Dataset.from_tensor_slices((np.ones((4, 1)), np.ones(4))).batch(2)
    assert fenced(fence.array_dataset, dataset, None, None, 2) is None
    assert fenced(fence.array_dataset, generator(), None, None, 2) is None


def test_an_error_of_the_data_is_keras_own_not_the_fences():
    with pytest.raises(ValueError, match="[Dd]ata cardinality is ambiguous") as raised:
        fence.array_dataset(np.ones((4, 1)), np.ones(3), None, 2)
    assert not isinstance(raised.value, FenceError)


def test_a_moved_read_names_keras_and_the_version_it_was_written_for(monkeypatch):
    monkeypatch.setitem(sys.modules, MODULE, None)  # as if an upgrade had moved the module
    with pytest.raises(FenceError, match=rf"array_data_adapter.*written for keras {WRITTEN_FOR['keras']}.*has moved"):
        fence.array_dataset(np.ones((4, 1)), np.ones(4), None, 2)
