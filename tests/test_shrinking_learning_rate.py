"""The shrink's learning rate on its own (`shrinking/learning_rate.py`): 3x
a trained optimizer's rate, a fresh one's own and a recurrent model's own,
lowered and restored once."""

import keras
import numpy as np
import pytest

from keras_regkit.shrinking.learning_rate import LearningRatePolicy


def compiled(rate=1e-2, trained=True, layers=()):
    model = keras.Sequential([keras.Input((4, 3)), *layers, keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(rate), "mse")
    model.optimizer.build(model.trainable_variables)
    if trained:
        model.optimizer.iterations.assign(5)
    return model


def rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


@pytest.mark.parametrize("trained, expected", [(True, 3e-2), (False, 1e-2)])
def test_auto_triples_the_rate_of_an_optimizer_that_has_trained_only(trained, expected):
    model = compiled(trained=trained)
    policy = LearningRatePolicy("auto")
    policy.apply(model)
    assert rate(model) == pytest.approx(expected)
    assert policy.raised(model) == trained
    policy.restore(model)
    assert rate(model) == pytest.approx(1e-2) and not policy.raised(model)


class Recurrent(keras.Model):
    """A subclassed model with its GRU one level down."""

    def __init__(self):
        super().__init__()
        self.block = keras.Sequential([keras.layers.GRU(2)])
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.block(x))


@pytest.mark.parametrize("layers", [
    [keras.layers.GRU(2)],
    [keras.layers.LSTM(2, return_sequences=True)],
    [keras.layers.Bidirectional(keras.layers.SimpleRNN(2))],
    [keras.layers.RNN(keras.layers.GRUCell(2))],
])
def test_auto_keeps_the_rate_of_a_model_with_a_recurrent_layer(layers):
    model = compiled(layers=layers)
    policy = LearningRatePolicy("auto")
    policy.apply(model)
    assert rate(model) == pytest.approx(1e-2) and not policy.raised(model)


def test_auto_finds_a_recurrent_layer_inside_a_subclassed_model():
    model = Recurrent()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model(np.zeros((1, 4, 3), "float32"))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(5)
    LearningRatePolicy("auto").apply(model)
    assert rate(model) == pytest.approx(1e-2)


def test_auto_still_triples_a_model_of_other_layers():
    model = compiled(layers=[keras.layers.Conv1D(2, 2), keras.layers.LayerNormalization()])
    LearningRatePolicy("auto").apply(model)
    assert rate(model) == pytest.approx(3e-2)


def test_a_given_rate_is_set_and_lowering_goes_back_to_the_users_for_good():
    model = compiled()
    policy = LearningRatePolicy(5e-2)
    policy.apply(model)
    assert rate(model) == pytest.approx(5e-2) and policy.raised(model)
    policy.lower(model)
    assert rate(model) == pytest.approx(1e-2) and not policy.raised(model)
    policy.restore(model)
    assert rate(model) == pytest.approx(1e-2)


def test_none_leaves_the_rate_alone():
    model = compiled()
    policy = LearningRatePolicy(None)
    policy.apply(model)
    assert rate(model) == pytest.approx(1e-2) and not policy.raised(model)


def test_a_schedule_is_left_alone_by_auto_and_refused_for_a_given_rate():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(schedule), "mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(10)
    LearningRatePolicy("auto").apply(model)
    assert rate(model) == pytest.approx(5e-3)  # still the schedule's, at its step
    model.optimizer.iterations.assign(20)
    assert rate(model) == pytest.approx(2.5e-3)
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        LearningRatePolicy(1e-3).apply(model)


def test_the_rate_resumes_as_it_was_saved():
    model = compiled()
    policy = LearningRatePolicy("auto")
    policy.apply(model)
    state = policy.get_state(model)
    fresh, resumed = compiled(), LearningRatePolicy("auto")
    resumed.set_state(fresh, state)
    assert rate(fresh) == pytest.approx(3e-2) and resumed.raised(fresh)
