"""BatchNormalization statistics during the shrink
(`shrinking/batch_norm.py`): they follow the network being cut at
`SHRINK_MOMENTUM` at most, and the user's momentum is back at the end."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.shrinking.batch_norm import SHRINK_MOMENTUM, StatisticsPace


def test_the_pace_lowers_only_trainable_layers_above_it_and_puts_theirs_back():
    slow, default, frozen = (keras.layers.BatchNormalization(momentum=0.999),
                             keras.layers.BatchNormalization(momentum=0.5),
                             keras.layers.BatchNormalization(momentum=0.999))
    frozen.trainable = False  # it updates nothing in training: leave it
    inner = keras.Sequential([keras.Input((4,)), slow])  # found at any depth
    model = keras.Sequential([keras.Input((4,)), inner, default, frozen])
    pace = StatisticsPace()
    pace.apply(model)
    assert (slow.momentum, default.momentum, frozen.momentum) == (SHRINK_MOMENTUM, 0.5, 0.999)
    pace.apply(model)  # again (a resume): the user's momentum is still the one kept
    pace.restore(model)
    assert (slow.momentum, default.momentum, frozen.momentum) == (0.999, 0.5, 0.999)
    pace.restore(model)  # once only
    assert slow.momentum == 0.999


def bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, name="hidden"),
        keras.layers.BatchNormalization(momentum=0.999, name="bn"), keras.layers.ReLU(),
        keras.layers.Dense(3, name="out")])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 8)).astype("float32")
    return x, (x[:, :3].argmax(1)).astype("int32")


def test_after_a_unit_shrink_the_cut_channels_statistics_describe_them():
    x, y = data()
    model = bn_model()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    bn = model.get_layer("bn")
    variance_before = keras.ops.convert_to_numpy(bn.moving_variance).copy()
    rk.shrink(model, x, y, sparsity=0.5, granularity="unit", epochs=3, batch_size=32)
    assert bn.momentum == 0.999  # the user's, back
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    cut = np.flatnonzero(np.all(kernel == 0, axis=0))
    assert cut.size == 8
    # A cut unit's output is constant: its variance is 0. At the user's
    # 0.999 the 48 steps (the last cut later) would keep over 90 % of it.
    variance = keras.ops.convert_to_numpy(bn.moving_variance)
    assert np.all(variance[cut] < 0.25 * variance_before[cut])
    # The live channels' statistics are those of the inputs they see now.
    probe = keras.Model(model.inputs, model.get_layer("bn").input)
    seen = probe.predict(x, verbose=0)
    live = np.setdiff1d(np.arange(16), cut)
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    normalized = (seen[:, live] - mean[live]) / np.sqrt(variance[live] + bn.epsilon)
    assert np.sqrt(np.mean(normalized ** 2)) == pytest.approx(1.0, abs=0.5)


def test_an_interrupted_shrink_puts_the_momentum_back():
    x, y = data()
    model = bn_model()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rk.shrink(model, x, y, sparsity=0.5, epochs=2, batch_size=32, callbacks=[Interrupt()])
    assert model.get_layer("bn").momentum == 0.999


def _bn_inputs(model, x):
    """What the BatchNormalization layer reads in inference: the Dense before it."""
    return keras.ops.convert_to_numpy(model.get_layer("hidden")(x))


def test_the_shrink_ends_with_statistics_refreshed_on_its_training_inputs(monkeypatch):
    x, y = data()
    model = bn_model()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    weights_before_refresh = {}
    finish = StatisticsPace.finish

    def spying(pace, model, *args, **kwargs):
        weights_before_refresh.update({v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights})
        return finish(pace, model, *args, **kwargs)

    monkeypatch.setattr(StatisticsPace, "finish", spying)
    rk.shrink(model, x, y, sparsity=0.5, granularity="unit", epochs=2, batch_size=32)
    bn = model.get_layer("bn")
    # The statistics of the network as it ends, on x (512 samples: two
    # batches of 256): the mean exact, the variance the batches' mean.
    inputs = _bn_inputs(model, x)
    np.testing.assert_allclose(bn.moving_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, inputs.reshape(2, 256, -1).var(1).mean(0), rtol=1e-4, atol=1e-6)
    for v in model.weights:  # nothing else moved
        if v.path not in (bn.moving_mean.path, bn.moving_variance.path):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), weights_before_refresh[v.path],
                                          err_msg=v.path)
    assert bn.momentum == 0.999


def test_a_shrink_that_ends_at_its_starting_model_leaves_the_statistics_as_they_were(monkeypatch):
    x, y = data()
    model = bn_model()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    monkeypatch.setattr(rk.shrinking.ValidationCheck, "verdict",  # no level holds
                        lambda check, model: rk.shrinking.Verdict(0.0, 1.0, False))
    result = rk.shrink(model, x, y, tolerance=0.01, granularity="unit", epochs=1, batch_size=32,
                       validation_data=(x[:64], y[:64]), cut_every=4)
    assert result.outcome == "baseline"
    for value, now in zip(before, model.get_weights()):
        np.testing.assert_array_equal(value, now)


def test_refresh_runs_every_other_layer_in_inference_mode():
    # Dropout before the BatchNormalization: in training mode it would
    # scale and zero the inputs, and the variance seen would be larger.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dropout(0.5, name="drop")(keras.layers.Dense(16, name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(h))
    x, _ = data()
    rk.deploy.refresh_batch_norm(model, x, batch_size=512)
    seen = _bn_inputs(model, x)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance, seen.var(0), rtol=1e-4, atol=1e-6)


def test_a_shrink_on_data_read_once_skips_the_refresh():
    pace = StatisticsPace()
    pace.refresh_from(iter([np.ones((2, 8), "float32")]))
    assert pace.refresh_data is None
    model = bn_model()
    assert pace.finish(model) == 0
