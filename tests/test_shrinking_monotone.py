"""A looser tolerance never ends denser, end to end: the regression row of
benchmarks/bench_tolerance_models.py (seed 0), where the skip rule that
needed a gain of the tolerance ended at 97 % zeros at 0.05 and 95 % at 0.1.
The rule itself is tested on plain data in tests/test_shrinking_climb.py."""

import keras
import numpy as np
import pytest

import keras_regkit as rk

pytestmark = pytest.mark.slow


def diabetes_splits():
    """The benchmark's standardised diabetes splits (train, validation)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype("float32")
    y = ((data.target - data.target.mean()) / data.target.std()).astype("float32")[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:282], y[:282]), (x[282:352], y[282:352])


def test_a_looser_tolerance_ends_at_least_as_sparse_on_the_same_model_and_seed():
    pytest.importorskip("sklearn")
    (x, y), validation = diabetes_splits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse", metrics=["mae"])
    model.fit(x, y, batch_size=64, epochs=200, validation_data=validation, verbose=0)
    start = [w.copy() for w in model.get_weights()]
    optimizer_start = [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables]
    ends = []
    for tolerance in (0.05, 0.1):
        model.set_weights(start)
        for variable, value in zip(model.optimizer.variables, optimizer_start):
            variable.assign(value)
        keras.utils.set_random_seed(0)
        result = rk.shrink(model, x, y, validation_data=validation, epochs=10, batch_size=64,
                           tolerance=tolerance, monitor="val_mae")
        ends.append(result.sparsity)
    assert ends[1] >= ends[0] - 1e-6, ends
