import csv

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import RegularizationScheduler
from keras_regkit.regularizers import ElasticNet, ExpAbs, L1
from keras_regkit.schedules import DelayedRamp

from conftest import Interrupt, assert_refused_and_unchanged, assert_round_trip, resumed, row, tiny_data, tiny_mlp

RAMP = keras.optimizers.schedules.PolynomialDecay(0.0, 4, 0.2)

BACKEND = keras.backend.backend()
# JAX refuses update_freq="batch" (its compiled step can't see the optimizer's
# counter); the tests that only need *a* mode use the one every backend has.
MODE = "epoch" if BACKEND == "jax" else "batch"
needs_batch_mode = pytest.mark.skipif(
    BACKEND == "jax", reason="update_freq='batch' is refused under JAX (see test_jax_refuses_batch_mode)"
)


def frozen_model(regularizer, **compile_kwargs):
    """A model whose weights never move (lr = 0), so the loss changes only
    through the penalty strength."""
    model = tiny_mlp()
    rk.apply_regularizers(model, {"out": regularizer})
    model.compile(keras.optimizers.SGD(0.0), "mse", **compile_kwargs)
    return model


@pytest.mark.parametrize("update_freq", [
    pytest.param("batch", marks=needs_batch_mode), "epoch",
])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_loss_moves_exactly_as_the_schedule_with_learning_rate_zero(jit_compile, update_freq):
    if BACKEND == "torch" and jit_compile and update_freq == "epoch":
        pytest.skip("torch.compile takes ~100 s per model on a CI CPU; the 'batch' case checks that the "
                    "compiled step reads each new strength, and 'epoch' moves the same variable less often")
    x, y = tiny_data()
    model = frozen_model(L1(RAMP), jit_compile=jit_compile)
    data_loss = model.evaluate(x, y, verbose=0)  # step 0: strength 0
    l1_norm = np.abs(keras.ops.convert_to_numpy(model.get_layer("out").kernel)).sum()
    # One batch per epoch: epoch k's loss is the loss at step k, in both modes.
    history = model.fit(x, y, batch_size=len(x), epochs=6, verbose=0, validation_data=(x, y),
                        callbacks=[rk.callbacks.RegularizationScheduler(update_freq)])
    expected = [data_loss + float(RAMP(step)) * l1_norm for step in range(6)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)
    # Validation, logged strengths and reg_loss use the step after the epoch's
    # batch ("batch": the step the next batch will use) or the epoch's own.
    after = range(1, 7) if update_freq == "batch" else range(6)
    np.testing.assert_allclose(history.history["val_loss"], [data_loss + float(RAMP(s)) * l1_norm for s in after], rtol=1e-5)
    np.testing.assert_allclose(history.history["strength/out/kernel"], [float(RAMP(s)) for s in after], rtol=1e-6)
    np.testing.assert_allclose(history.history["reg_loss"], [float(RAMP(s)) * l1_norm for s in after], rtol=1e-5)


def test_epoch_update_freq_uses_the_epoch_index():
    x, y = tiny_data()
    model = frozen_model(L1(RAMP))
    data_loss = model.evaluate(x, y, verbose=0)
    l1_norm = np.abs(keras.ops.convert_to_numpy(model.get_layer("out").kernel)).sum()
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler("epoch")])
    expected = [data_loss + float(RAMP(epoch)) * l1_norm for epoch in range(5)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


@needs_batch_mode
def test_strength_updates_never_retrace_the_train_function():
    x, y = tiny_data()
    model = frozen_model(ElasticNet(l1=RAMP, l2=DelayedRamp(0.1, 2, 30)))
    traces = []
    train_step = model.train_step

    def counting_train_step(data):  # Python runs it only while tracing
        traces.append(1)
        return train_step(data)

    model.train_step = counting_train_step
    scheduler = rk.callbacks.RegularizationScheduler()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[scheduler])
    traced_once = len(traces)
    train_function = model.train_function
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[scheduler])
    assert model.train_function is train_function
    if BACKEND == "tensorflow":  # PyTorch runs the step eagerly: nothing is traced
        assert 0 < traced_once == len(traces)
    assert len(set(history.history["strength/out/kernel/l2"])) == 3


def test_schedule_changes_the_weights_trained():
    x, y = tiny_data()
    final = {}
    for name, regularizer in [("scheduled", L1(DelayedRamp(0.05, 3, 0))), ("off", L1(0.0)), ("constant", L1(0.05))]:
        keras.utils.set_random_seed(1)
        model = tiny_mlp()
        rk.apply_regularizers(model, {"*": regularizer})
        model.compile(keras.optimizers.SGD(0.05), "mse")
        model.fit(x, y, batch_size=len(x), epochs=6, verbose=0, shuffle=False, callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
        final[name] = model.get_weights()[0]
    # Off for the first 3 steps, then on: different from both always-off and always-on.
    assert not np.allclose(final["scheduled"], final["off"], atol=1e-4)
    assert not np.allclose(final["scheduled"], final["constant"], atol=1e-4)
    assert np.abs(final["scheduled"]).sum() < np.abs(final["off"]).sum()


def test_finds_schedules_in_nested_models_and_logs_to_csv(tmp_path):
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="deep", kernel_regularizer=ExpAbs(RAMP))], name="inner")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="top")(inner(inputs)))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = tiny_data()
    log = tmp_path / "log.csv"
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0,
              callbacks=[rk.callbacks.RegularizationScheduler(MODE), keras.callbacks.CSVLogger(str(log))])
    rows = list(csv.DictReader(log.open()))
    logged_steps = [1, 2, 3] if MODE == "batch" else [0, 1, 2]
    assert [float(r["strength/inner/deep/kernel"]) for r in rows] == pytest.approx([0.05 * s for s in logged_steps])
    assert [float(r["reg_loss"]) > 0 for r in rows] == [s > 0 for s in logged_steps]


def test_shows_in_the_progress_bar(capsys):
    x, y = tiny_data()
    model = frozen_model(L1(RAMP))
    model.fit(x, y, epochs=1, verbose=2, callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    out = capsys.readouterr().out
    assert "reg_loss:" in out and "strength/out/kernel:" in out


def test_model_without_schedules_warns_once_naming_what_it_looked_for_and_only_logs_reg_loss():
    x, y = tiny_data()
    model = frozen_model(L1(0.1))
    with pytest.warns(UserWarning, match=r"nothing to schedule.*regularizers .*LearningRateSchedule") as record:
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    assert len([w for w in record if "nothing to schedule" in str(w.message)]) == 1
    assert sorted(history.history) == ["loss", "reg_loss"]


@pytest.mark.parametrize("regularizer, fragment", [
    (L1(keras.optimizers.schedules.PolynomialDecay(float("nan"), 10, 0.0)), r"alpha=nan at step 0"),
    # 0 * 1e30 ** step: 0 until float32's 1e60 is inf, then 0 * inf.
    (L1(keras.optimizers.schedules.ExponentialDecay(0.0, 1, 1e30)), r"alpha=nan at step 2"),
    (ElasticNet(0.1, keras.optimizers.schedules.ExponentialDecay(1.0, 1, 1e30)), r"l2=inf at step 2"),
])
def test_a_schedule_that_gives_nan_or_inf_stops_fit_before_a_step_uses_it(regularizer, fragment):
    x, y = tiny_data()
    model = tiny_mlp()
    rk.apply_regularizers(model, {"out": regularizer})
    model.compile(keras.optimizers.SGD(0.01), "mse")
    # One batch per epoch: the step is the epoch index in both modes.
    with pytest.raises(ValueError, match=r"schedule of 'out/kernel' gives " + fragment + r".*finite.*Regularizer: "):
        model.fit(x, y, batch_size=len(x), epochs=4, verbose=0,
                  callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    # No step trained with it: the weights are finite.
    assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w))) for w in model.weights)


def test_rejects_unknown_update_freq_and_round_trips():
    with pytest.raises(ValueError, match=r"update_freq.*'batch' or 'epoch'.*Received: update_freq='step'"):
        rk.callbacks.RegularizationScheduler(update_freq="step")
    restored = assert_round_trip(rk.callbacks.RegularizationScheduler("epoch", log_strengths=False))
    assert restored.update_freq == "epoch"
    with pytest.raises(ValueError, match=r"unknown keys \['freq'\]"):
        rk.callbacks.RegularizationScheduler.from_config({"freq": "epoch"})


@needs_batch_mode
def test_set_step_moves_only_that_regularizer_not_the_optimizer():
    x, y = tiny_data()
    a, b = L1(RAMP), L1(DelayedRamp(0.1, 0, 100))
    model = tiny_mlp()
    rk.apply_regularizers(model, {"hidden0": a, "out": b})
    model.compile(keras.optimizers.SGD(0.0), "mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    assert a.step == b.step == int(model.optimizer.iterations) == 8
    a.set_step(1)
    assert a.step == 1 and b.step == 8 and int(model.optimizer.iterations) == 8
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    assert a.step == 5 and b.step == 12


@needs_batch_mode
def test_schedule_resumes_from_saved_position_with_a_fresh_optimizer(tmp_path):
    x, y = tiny_data()
    model = frozen_model(L1(DelayedRamp(1.0, 0, 100)))
    model.fit(x, y, batch_size=8, epochs=10, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    reg = reloaded.get_layer("out").kernel_regularizer
    assert reg.step == 40
    reloaded.compile(keras.optimizers.SGD(0.0), "mse")  # iterations restart at 0
    reloaded.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    assert reg.step == 44 and reg.current_strengths()["alpha"] == pytest.approx(0.44)


def test_scheduled_penalty_attached_mid_fit_starts_moving():
    x, y = tiny_data()
    model = frozen_model(L1(0.0))
    late = L1(DelayedRamp(1.0, 0, 100))

    class AttachAtEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                rk.apply_regularizers(self.model, {"hidden0": late})

    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                        callbacks=[AttachAtEpoch1(), rk.callbacks.RegularizationScheduler(MODE)])
    # "batch": 4 steps per epoch from its own step 0; "epoch": the epoch index.
    assert late.step == (8 if MODE == "batch" else 2)
    expected = [0.04, 0.08] if MODE == "batch" else [0.01, 0.02]
    assert history.history["strength/hidden0/kernel"] == pytest.approx(expected)


@needs_batch_mode
def test_epoch_mode_counts_initial_epoch_and_stops_following_the_optimizer():
    x, y = tiny_data()
    reg = L1(DelayedRamp(1.0, 0, 100))
    model = frozen_model(reg)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler()])
    assert reg.step == 8
    model.fit(x, y, batch_size=8, epochs=5, initial_epoch=3, verbose=0,
              callbacks=[rk.callbacks.RegularizationScheduler("epoch")])
    assert reg.step == 4


def test_epoch_mode_rebuilds_the_train_function_only_under_jax_and_only_when_a_strength_changes():
    x, y = tiny_data()
    model = frozen_model(L1(DelayedRamp(0.1, 2, 2)))  # 0, 0, 0, 0.05, 0.1, 0.1
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                seen.append(self.model.train_function)

    model.fit(x, y, batch_size=len(x), epochs=6, verbose=0,
              callbacks=[rk.callbacks.RegularizationScheduler("epoch"), Spy()])
    changes = [a is not b for a, b in zip(seen, seen[1:])]
    # Only JAX's compiled step holds the strength as a constant; TensorFlow
    # and PyTorch read it live and must never rebuild.
    assert changes == ([False, False, True, True, False] if BACKEND == "jax" else [False] * 5)


@pytest.mark.skipif(BACKEND != "jax", reason="only JAX refuses update_freq='batch'")
def test_jax_refuses_batch_mode():
    with pytest.raises(ValueError, match=r"update_freq='batch'.*'jax' backend.*update_freq='epoch'"):
        rk.callbacks.RegularizationScheduler()


# -- resumed with BackupAndRestore: as if never interrupted ----------------------

RESUMED_RAMP = keras.optimizers.schedules.PolynomialDecay(0.0, 20, 0.2)


def scheduled_fit(backup, update_freq, backup_first, extra):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(4, name="out", kernel_regularizer=rk.regularizers.L1(RESUMED_RAMP)),
    ])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    pair = [keras.callbacks.BackupAndRestore(backup), RegularizationScheduler(update_freq)]
    x, y = tiny_data()
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0, shuffle=False,
                        callbacks=(pair if backup_first else pair[::-1]) + extra)
    return history.history, model.get_layer("out").kernel_regularizer.step, model.get_weights()


_UNINTERRUPTED = {}


@pytest.mark.parametrize("backup_first", [True, False], ids=["backup_first", "scheduler_first"])
@pytest.mark.parametrize("update_freq", [
    pytest.param("batch", marks=pytest.mark.skipif(MODE != "batch", reason="update_freq='batch' is refused under JAX")),
    "epoch",
])
def test_schedule_resumes_where_the_backup_left_off(tmp_path, update_freq, backup_first):
    if update_freq not in _UNINTERRUPTED:  # the same whichever callback is first
        _UNINTERRUPTED[update_freq] = scheduled_fit(str(tmp_path / "a"), update_freq, backup_first, [])
    expected, expected_step, expected_weights = _UNINTERRUPTED[update_freq]

    def run(extra):
        return scheduled_fit(str(tmp_path / "b"), update_freq, backup_first, extra)

    history, step, weights = resumed(run, [Interrupt(3)])
    # Epochs 3-5 were run again after the resume, at the same strengths.
    for key in ("loss", "reg_loss", "strength/out/kernel"):
        np.testing.assert_allclose(history[key], expected[key][3:], rtol=1e-6, err_msg=key)
    assert step == expected_step
    for a, b in zip(weights, expected_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- bad and unusual input: the tables' helpers are in conftest -----------------

BAD_INPUT = [
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("scheduler-log_strengths-str", lambda m: rk.callbacks.RegularizationScheduler("epoch", log_strengths="no"),
     TypeError, "log_strengths"),
    row("scheduler-log_reg_loss-str", lambda m: rk.callbacks.RegularizationScheduler("epoch", log_reg_loss="False"),
     TypeError, "log_reg_loss"),
    # Update frequency.
    row("scheduler-update_freq-typo", lambda m: rk.callbacks.RegularizationScheduler("epochs"), ValueError,
     "update_freq"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
