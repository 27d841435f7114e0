"""What the shrink costs beyond the training it runs (issue #41): no trace of
the train step (its zeros held after each call of it), or, held by
constraints, one per shrink, never one per cut; the tolerance mode's checks through the model's compiled
predict step, traced once and reused; a direct call where that step would
not compute `model(x)` alone."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.pruning.hold import MASK_NAME
from keras_regkit.shrinking import evaluation


class CountingModel(keras.Sequential):
    """Counts the Python runs of its train step: under TensorFlow and JAX,
    the traces of the compiled step; under PyTorch (eager), every step."""

    traces = 0

    def train_step(self, *args, **kwargs):
        CountingModel.traces += 1
        return super().train_step(*args, **kwargs)


def trained(model_class=keras.Sequential):
    model = model_class([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    return model, x, y


def counted_shrink(model, x, y, monkeypatch) -> list:
    """Shrinks; returns the `force` of each `make_train_function` call."""
    rebuilt = []
    make = model.make_train_function
    monkeypatch.setattr(model, "make_train_function", lambda force=False: rebuilt.append(force) or make(force))
    CountingModel.traces = 0
    result = rk.shrink(model, x, y, sparsity=0.9, epochs=3, batch_size=32, cut_every=2)
    assert result.cuts >= 5
    return rebuilt


# The shrink below: 3 epochs of 8 steps, kernels of 8 x 32 and 32 x 3 entries held.
SHRINK_ENTRY_STEPS = 24 * (8 * 32 + 32 * 3)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="PyTorch's step runs eagerly: no trace to save")
def test_shrink_never_traces_the_train_step_nor_makes_the_next_fit_trace(monkeypatch):
    model, x, y = trained(CountingModel)
    monkeypatch.setattr(hold_lib, "STEP_HOLD_BUDGET", SHRINK_ENTRY_STEPS)  # just within
    rebuilt = counted_shrink(model, x, y, monkeypatch)
    assert True not in rebuilt  # the step Keras traced before, held from outside
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    if keras.backend.backend() != "torch":  # PyTorch runs the step eagerly: no trace to count
        assert CountingModel.traces == 0


@pytest.mark.parametrize("why", ["a weight's constraint", "a long budget"])
def test_held_by_constraints_the_shrink_traces_the_train_step_once_not_per_cut(monkeypatch, why):
    model, x, y = trained(CountingModel)
    if why == "a long budget":  # one held entry x step over
        monkeypatch.setattr(hold_lib, "STEP_HOLD_BUDGET", SHRINK_ENTRY_STEPS - 1)
    else:
        model.layers[0].kernel.constraint = keras.constraints.MaxNorm(100.0)  # the mask must go first
    rebuilt = counted_shrink(model, x, y, monkeypatch)
    # The first hold sets new constraints (one rebuild); the release at the end another, traced by the next fit.
    assert rebuilt.count(True) == 2
    if keras.backend.backend() != "torch":
        assert CountingModel.traces == 1
    # Under JAX the masks rode in the optimizer's variables (what its jitted step reads), and left with the release.
    assert not [v for v in model.optimizer.variables if v.name == MASK_NAME]


def test_checks_run_the_compiled_predict_step_traced_once(monkeypatch):
    model, x, y = trained()
    calls = []
    step = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda batch: calls.append(len(batch)) or step(batch))
    traced = []
    layer_call = model.layers[0].call
    monkeypatch.setattr(model.layers[0], "call", lambda *a, **k: traced.append(1) or layer_call(*a, **k))
    # 2,500 samples: chunks of 1,024 and a last of 452, in each of three readings.
    xv = np.repeat(x, 10, axis=0)[:2500]
    yv = np.repeat(y, 10, axis=0)[:2500]
    for _ in range(3):
        evaluation.validation_hits(model, (xv, yv))
    assert calls == [1024, 1024, 452] * 3
    if keras.backend.backend() != "torch":  # compiled: the layer's Python runs at its traces only
        assert len(traced) <= 4  # two shapes, each traced at most twice (TensorFlow's relaxed retrace)


def test_checks_call_the_model_directly_when_it_has_its_own_predict_step(monkeypatch):
    class OwnStep(keras.Sequential):
        def predict_step(self, data):
            return super().predict_step(data) * 0.0  # not what model(x) gives

    model, x, y = trained(OwnStep)
    monkeypatch.setattr(model, "predict_on_batch", lambda batch: pytest.fail("the predict step was used"))
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(evaluation.predict(model, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_check_through_the_compiled_step_measures_what_direct_calls_give():
    model, x, y = trained()
    direct = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
    np.testing.assert_array_equal(evaluation.top1(model, x)[:, 0], direct)
    check = rk.shrinking.ValidationCheck(tolerance=0.01)
    assert check.start(model, (x, y)) == pytest.approx(np.mean(direct == y))
    model.layers[0].kernel.assign(np.zeros((8, 32), "float32"))  # a change the compiled step must see
    direct = np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)
    assert check.measure(model)[0] == pytest.approx(np.mean(direct == y))


def test_a_decision_reads_the_validation_data_once(monkeypatch):
    # A level found recovered (its drift read) is checked at once: the
    # check takes the drift's predictions instead of a second pass.
    from keras_regkit.shrinking import guards
    from keras_regkit.shrinking.callback import ShrinkPhase

    model, x, y = trained()
    events = []
    real_read, real_decide = guards.validation_hits, ShrinkPhase._decide
    monkeypatch.setattr(guards, "validation_hits", lambda *a: events.append("read") or real_read(*a))

    def decide(self, final=False):
        events.append("(")
        real_decide(self, final)
        events.append(")")

    monkeypatch.setattr(ShrinkPhase, "_decide", decide)
    result = rk.shrink(model, x, y, tolerance=0.2, validation_data=(x, y), epochs=3, batch_size=32, cut_every=2)
    reads_per_decision, inside = [], False
    for event in events:
        if event == "(":
            reads_per_decision.append(0)
            inside = True
        elif event == ")":
            inside = False
        elif inside:
            reads_per_decision[-1] += 1
    assert result.levels and max(reads_per_decision) == 1


class ConstraintSpy(keras.callbacks.Callback):
    """Records, after each step, whether the first kernel is held by a constraint."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(isinstance(self.model.layers[0].kernel.constraint, rk.pruning.HoldZeros))


@pytest.mark.parametrize("setting", ["distillation", "batch normalization"])
def test_a_shrink_that_makes_keras_trace_the_step_anyway_holds_by_constraints(setting):
    model, x, y = trained()
    if setting == "batch normalization":  # at Keras' momentum: the shrink lowers it, so the step is traced again
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.BatchNormalization(),
                                  keras.layers.Dense(3)])
        model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    spy = ConstraintSpy()
    rk.shrink(model, x, y, sparsity=0.9, epochs=2, batch_size=32, cut_every=2,
              distill=setting == "distillation", callbacks=[spy])
    assert spy.seen and all(spy.seen)
