"""A shrink that refuses its input changes nothing: every check on the data
comes before the learning rate, the weights, the optimizer's slots or the
constraints are touched (issue #30, families 1-3)."""

import keras
import numpy as np
import pytest

import keras_regkit as rk

N = 64


def data(n=N, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def trained(outputs=1):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    if outputs == 1:
        model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model = keras.Model(inputs, {"a": keras.layers.Dense(2, name="a")(hidden),
                                     "b": keras.layers.Dense(2, name="b")(hidden)})
        loss = {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    model.compile(keras.optimizers.Adam(1e-2), loss)
    x, y = data()
    model.fit(x, y if outputs == 1 else {"a": y, "b": y}, epochs=2, batch_size=16, verbose=0)
    return model


def state(model):
    """Everything a failed shrink must leave as it was."""
    return {
        "weights": model.get_weights(),
        "optimizer": [np.array(keras.ops.convert_to_numpy(v)) for v in model.optimizer.variables],
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        "constraints": [getattr(v, "constraint", None) for v in model.weights],
    }


def assert_unchanged(before, after):
    assert after["learning_rate"] == before["learning_rate"]
    assert after["constraints"] == before["constraints"]
    for key in ("weights", "optimizer"):
        assert len(after[key]) == len(before[key])
        for a, b in zip(after[key], before[key]):
            np.testing.assert_array_equal(a, b)


xv, yv = data(32, seed=1)
nan_x = xv.copy()
nan_x[3, 2] = np.nan

CASES = [
    # (outputs, validation_data, extra kwargs, error, what the message names)
    (1, (data(32, features=5)[0], yv), {}, ValueError, "validation_data"),           # wrong feature count
    (1, (xv, [yv, yv]), {}, ValueError, "validation_data.*2 targets"),                # a list for one output
    (1, (xv, yv[:20]), {}, ValueError, "validation_data.*same number of samples"),     # y shorter than x
    (1, (xv, yv, np.ones(5)), {}, ValueError, "validation_data.*same number of samples"),  # weights
    (2, (xv, {"a": yv}), {}, ValueError, "validation_data.*missing"),                 # a dict missing an output
    (2, (xv, {"a": yv, "b": yv, "c": yv}), {}, ValueError, "validation_data.*unknown"),
    (1, (nan_x, yv), {}, ValueError, "validation_data.*not all finite"),              # NaN inputs
    (1, (xv, yv), {"monitor": "val_auc"}, ValueError, "argument `monitor`.*val_auc"),  # not compiled
    (1, (xv, yv), {"patience": 2}, ValueError, "`patience` has no meaning"),
    (1, (xv, yv), {"start_epoch": 1}, ValueError, "`start_epoch` has no meaning"),
    (1, (xv, yv), {"batch_size": 0}, ValueError, "argument `batch_size`"),
    (1, (xv, yv), {"mode": "up"}, ValueError, "argument `mode`"),
]


@pytest.mark.parametrize("mode", ["tolerance", "sparsity"])
@pytest.mark.parametrize("outputs, validation, kwargs, error, match", CASES)
def test_a_refused_shrink_leaves_model_and_optimizer_as_they_were(mode, outputs, validation, kwargs, error, match):
    model = trained(outputs)
    x, y = data()
    before = state(model)
    target = {"tolerance": 0.05} if mode == "tolerance" else {"sparsity": 0.5}
    with pytest.raises(error, match=match):
        rk.shrink(model, x, y if outputs == 1 else {"a": y, "b": y}, validation_data=validation, epochs=2,
                  **target, **kwargs)
    assert_unchanged(before, state(model))


def test_sparsity_mode_reports_a_regression_models_validation_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x, _ = data()
    y = x[:, :1] * 2.0
    model.fit(x, y, epochs=2, verbose=0)
    validation = (xv, xv[:, :1] * 2.0)
    start = model.evaluate(*validation, verbose=0)
    result = rk.shrink(model, x, y, sparsity=0.5, validation_data=validation, epochs=1)
    assert result.monitor == "val_loss" and result.baseline == pytest.approx(start, rel=1e-4)
    assert result.final == pytest.approx(model.evaluate(*validation, verbose=0), rel=1e-4)
