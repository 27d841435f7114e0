"""Bad and unusual input across the public API (issue #15).

Two tables. `ERRORS`: each row is a call, the exception it must raise and a
fragment of the message that names the argument (or says what to do); the
call gets a fresh model with a penalty already attached, and must leave its
weights, regularizers and constraints exactly as they were. `RIGHT`: inputs
that used to give a wrong result with no error; each row asserts the right
one.
"""

import math

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L1, L2, Combined, ElasticNet, ExpAbs, GroupLasso
from keras_regkit.schedules import DelayedRamp

from conftest import tiny_data, tiny_mlp


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Overrides conftest's: `clear_session` (about 1 s, a full garbage
    # collection) once for the module, not after each of its ~100 rows.
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True, scope="module")
def _clear_session_once():
    yield
    keras.backend.clear_session()


def model_under_test():
    """A built model with a penalty on one kernel and zeros held (a
    `HoldZeros` constraint) on another, so that a call that changed any of
    them shows."""
    model = tiny_mlp(units=(8, 4))
    rk.apply_regularizers(model, {"hidden0": L2(0.01)})
    rk.prune(model, sparsity=0.5, layers="out", hold=True)
    return model


def unbuilt():
    return keras.Sequential([keras.layers.Dense(4, name="d"), keras.layers.Dense(2)])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def with_nonfinite(model):
    kernel = keras.ops.convert_to_numpy(model.get_layer("hidden0").kernel).copy()
    kernel[0, :2] = [np.nan, np.inf]
    model.get_layer("hidden0").kernel.assign(kernel)
    return model


def compiled(model):
    model.compile("sgd", "mse")
    return model


def frozen_optimizer(model):
    # Learning rate 0: `fit` itself changes no weight, so any change is the callback's.
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


def unregistered_fn(x):
    return 0.0 * keras.ops.sum(x)


@keras.saving.register_keras_serializable(package="test_bad_input")
def registered_fn(x):
    return 0.0 * keras.ops.sum(x)


def search(model, **kwargs):
    x, y = tiny_data()
    kwargs.setdefault("validation_data", (x, y))
    return rk.search_strength(lambda: compiled(tiny_mlp()), x, y, **kwargs)


def infinite_dataset():
    import tensorflow as tf

    x, y = tiny_data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


S = keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.0)  # a serializable schedule


def row(name, call, error, fragment, prepare=None):
    """`call(model)` must raise `error` with `fragment` in its message;
    `prepare(model)` sets up the state the call receives."""
    return pytest.param(call, error, fragment, prepare, id=name)


ERRORS = [
    # Proximal penalties (#29): refused at the call, before any constraint is set.
    row("l1-proximal-str", lambda m: L1(0.1, proximal="yes"), TypeError, "proximal"),
    row("grouplasso-proximal-none", lambda m: GroupLasso(0.1, proximal=None), TypeError, "proximal"),
    row("bind-proximal-uncompiled", lambda m: rk.bind_proximal(m), ValueError, "optimizer=None",
        prepare=lambda m: rk.apply_regularizers(m, {"out": L1(0.1, proximal=True)})),
    row("bind-proximal-nadam", lambda m: rk.bind_proximal(m, keras.optimizers.Nadam()), ValueError,
        "optimizer=Nadam", prepare=lambda m: rk.apply_regularizers(m, {"out": L1(0.1, proximal=True)})),
    row("bind-proximal-accumulation",
        lambda m: rk.bind_proximal(m, keras.optimizers.SGD(gradient_accumulation_steps=2)), ValueError,
        "gradient_accumulation_steps=2",
        prepare=lambda m: rk.apply_regularizers(m, {"out": L1(0.1, proximal=True)})),
    # The second layer's axis is wrong: the first gets no constraint either.
    row("bind-proximal-grouplasso-axis", lambda m: rk.bind_proximal(m, keras.optimizers.SGD()), ValueError,
        "axis=5", prepare=lambda m: rk.apply_regularizers(m, {"hidden0": L1(0.1, proximal=True),
                                                             "out": GroupLasso(0.1, axis=5, proximal=True)})),
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("report-relative-str", lambda m: rk.sparsity_report(m, relative="False"), TypeError, "relative"),
    row("report-relative-none", lambda m: rk.sparsity_report(m, relative=None), TypeError, "relative"),
    row("report-relative-int", lambda m: rk.sparsity_report(m, relative=1), TypeError, "relative"),
    row("monitor-per_layer-str", lambda m: rk.callbacks.SparsityMonitor(per_layer="no"), TypeError, "per_layer"),
    row("monitor-relative-str", lambda m: rk.callbacks.SparsityMonitor(relative="False"), TypeError, "relative"),
    row("monitor-verbose-str", lambda m: rk.callbacks.SparsityMonitor(verbose="1"), TypeError, "verbose"),
    row("prune-hold-str", lambda m: rk.prune(m, sparsity=0.5, hold="no"), TypeError, "hold"),
    row("prune-hold-none", lambda m: rk.prune(m, threshold=0.1, hold=None), TypeError, "hold"),
    row("scheduler-log_strengths-str", lambda m: rk.callbacks.RegularizationScheduler("epoch", log_strengths="no"),
     TypeError, "log_strengths"),
    row("scheduler-log_reg_loss-str", lambda m: rk.callbacks.RegularizationScheduler("epoch", log_reg_loss="False"),
     TypeError, "log_reg_loss"),
    row("search-overwrite-str", lambda m: search(m, overwrite="no"), TypeError, "overwrite"),
    row("search-verbose-str", lambda m: search(m, verbose="1"), TypeError, "verbose"),
    row("search-build_model-int", lambda m: rk.search_strength(5, *tiny_data(), validation_data=tiny_data()),
        TypeError, "build_model"),
    row("search-penalty-int", lambda m: search(m, penalty=5), TypeError, "penalty"),
    row("search-callbacks-none", lambda m: search(m, callbacks=None), TypeError, "callbacks"),
    row("search-callbacks-int", lambda m: search(m, callbacks=[5]), TypeError, "callbacks"),
    row("search-batch_size-zero", lambda m: search(m, batch_size=0), ValueError, "batch_size"),
    row("search-batch_size-str", lambda m: search(m, batch_size="8"), TypeError, "batch_size"),
    # Hangs: trials read their data to the end.
    row("search-infinite-x", lambda m: rk.search_strength(lambda: compiled(tiny_mlp()), infinite_dataset(),
                                                          validation_data=tiny_data()), ValueError, "`x`"),
    row("search-infinite-validation", lambda m: search(m, validation_data=infinite_dataset()), ValueError,
        "validation_data"),
    row("search-directory-int", lambda m: search(m, directory=5), TypeError, "directory"),
    row("search-project_name-int", lambda m: search(m, project_name=5), TypeError, "project_name"),
    # A model that is not built has no weights: say so, don't blame the selector.
    row("apply-unbuilt", lambda m: rk.apply_regularizers(unbuilt(), {"*": L1(0.1)}), ValueError, "build the model first"),
    row("remove-unbuilt", lambda m: rk.remove_regularizers(unbuilt()), ValueError, "build the model first"),
    row("prune-unbuilt", lambda m: rk.prune(unbuilt(), sparsity=0.5), ValueError, "build the model first"),
    row("report-unbuilt", lambda m: rk.sparsity_report(unbuilt()), ValueError, "build the model first"),
    row("report-unbuilt-subclassed", lambda m: rk.sparsity_report(Subclassed()), ValueError, "build the model first"),
    row("iter_weights-unbuilt", lambda m: list(rk.iter_weights(unbuilt())), ValueError, "build the model first"),
    row("reapply-unbuilt", lambda m: rk.reapply_regularizers(
        unbuilt(), rk.apply_regularizers(tiny_mlp(), {"*": L1(0.1)}).to_json()), ValueError, "build the model first"),
    row("dead_units-unbuilt", lambda m: rk.dead_units(unbuilt()), ValueError, "build the model first"),
    row("compact-unbuilt", lambda m: rk.compact(unbuilt()), ValueError, "keras.Input"),
    # Callable selectors must answer True or False.
    row("selector-returns-array", lambda m: rk.apply_regularizers(m, {lambda layer: np.array([True, False]): L1(0.1)}),
     TypeError, "must return True or False"),
    row("selector-returns-str", lambda m: rk.prune(m, sparsity=0.5, layers=lambda layer: layer.name),
     TypeError, "must return True or False"),
    row("selector-returns-none", lambda m: rk.remove_regularizers(m, layers=lambda layer: None),
     TypeError, "must return True or False"),
    row("selector-none-key", lambda m: rk.apply_regularizers(m, {None: L1(0.1)}), TypeError, "selector"),
    row("selector-list", lambda m: rk.prune(m, sparsity=0.5, layers=["hidden0"]), TypeError, "selector"),
    row("selector-not-callable", lambda m: rk.apply_regularizers(m, {3: L1(0.1)}), TypeError, "selector"),
    row("selector-matches-nothing", lambda m: rk.apply_regularizers(m, {"nomatch*": L1(0.1)}), ValueError, "hidden0"),
    # Weight kinds.
    row("report-weights-none", lambda m: rk.sparsity_report(m, weights=None), ValueError, "weights"),
    row("apply-weights-int", lambda m: rk.apply_regularizers(m, {"*": L1(0.1)}, weights=5), ValueError, "weights"),
    row("prune-weights-mixed", lambda m: rk.prune(m, sparsity=0.5, weights=["kernel", 3]), ValueError, "weights"),
    row("iter-weights-typo", lambda m: list(rk.iter_weights(m, "kernels")), ValueError, "weights"),
    row("monitor-weights-typo", lambda m: rk.callbacks.SparsityMonitor(weights="kernels"), ValueError, "weights"),
    # Not a model.
    row("apply-model-none", lambda m: rk.apply_regularizers(None, {"*": L1(0.1)}), TypeError, "model"),
    row("report-model-path", lambda m: rk.sparsity_report("model.keras"), TypeError, "model"),
    row("prune-model-list", lambda m: rk.prune(m.layers, sparsity=0.5), TypeError, "model"),
    row("release-model-none", lambda m: rk.release_zeros(None), TypeError, "model"),
    row("dead_units-model-str", lambda m: rk.dead_units("m"), TypeError, "model"),
    row("compact-model-str", lambda m: rk.compact("m"), TypeError, "model"),
    row("compact-custom_objects-list", lambda m: rk.compact(m, custom_objects=[L1]), TypeError, "custom_objects"),
    row("compact-subclassed", lambda m: rk.compact(Subclassed()), ValueError, "model"),
    # Combined: every part must survive save and reload.
    row("combined-lambda", lambda m: Combined([L1(0.1), lambda x: 0.0 * keras.ops.sum(x)]), TypeError, "regularizers"),
    row("combined-unregistered-fn", lambda m: Combined([L1(0.1), unregistered_fn]), TypeError, "item 1"),
    row("combined-config-missing-key", lambda m: Combined.from_config({}), ValueError, "regularizers"),
    row("combined-empty", lambda m: Combined([]), TypeError, "regularizers"),
    row("combined-not-list", lambda m: Combined(L1(0.1)), TypeError, "regularizers"),
    row("combined-not-callable", lambda m: Combined([L1(0.1), 0.5]), TypeError, "regularizers"),
    # Strengths and schedules.
    row("l1-negative", lambda m: L1(-0.1), ValueError, "alpha"),
    row("l1-nan", lambda m: L1(float("nan")), ValueError, "alpha"),
    row("l1-str", lambda m: L1("0.1"), TypeError, "alpha"),
    row("l1-bool", lambda m: L1(True), TypeError, "alpha"),
    row("l1-step-negative", lambda m: L1(S, step=-1), ValueError, "step"),
    row("l1-step-float", lambda m: L1(S, step=1.5), TypeError, "step"),
    row("elasticnet-l2-negative", lambda m: ElasticNet(0.1, -1.0), ValueError, "l2"),
    row("expabs-scale-zero", lambda m: ExpAbs(0.1, scale=0.0), ValueError, "scale"),
    row("expabs-scale-tiny", lambda m: ExpAbs(0.1, scale=1e-39), ValueError, "scale"),  # was a NaN penalty
    row("expabs-scale-huge", lambda m: ExpAbs(0.1, scale=1e300), ValueError, "scale"),  # was no penalty
    row("expabs-scale-str", lambda m: ExpAbs(0.1, scale="1"), TypeError, "scale"),
    row("grouplasso-axis-float", lambda m: GroupLasso(0.1, axis=1.0), TypeError, "axis"),
    row("ramp-target-negative", lambda m: DelayedRamp(-1.0, 10, 10), ValueError, "target"),
    row("ramp-delay-float", lambda m: DelayedRamp(0.1, 1.5, 10), TypeError, "delay_steps"),
    row("ramp-ramp-negative", lambda m: DelayedRamp(0.1, 10, -1), ValueError, "ramp_steps"),
    # apply_regularizers: all or nothing.
    row("apply-not-dict", lambda m: rk.apply_regularizers(m, L1(0.1)), TypeError, "regularizers"),
    row("apply-str-regularizer", lambda m: rk.apply_regularizers(m, {"*": "l1"}), TypeError, "'*'"),
    row("apply-second-entry-bad", lambda m: rk.apply_regularizers(m, {"out": L1(0.1), "hidden0": "l1"}),
     TypeError, "hidden0"),
    row("apply-allow_unsaved-str", lambda m: rk.apply_regularizers(m, {"*": L1(0.1)}, allow_unsaved="no"),
        TypeError, "allow_unsaved"),
    row("remove-allow_unsaved-str", lambda m: rk.remove_regularizers(m, allow_unsaved="yes"), TypeError,
        "allow_unsaved"),
    row("reapply-not-json", lambda m: rk.reapply_regularizers(m, "not json"), ValueError, "attachment_json"),
    row("reapply-other-model", lambda m: rk.reapply_regularizers(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="x")]),
        rk.apply_regularizers(tiny_mlp(), {"*": L1(0.1)}).to_json()), ValueError, "has no weights"),
    # prune.
    row("prune-neither", lambda m: rk.prune(m), ValueError, "threshold"),
    row("prune-both", lambda m: rk.prune(m, threshold=0.1, sparsity=0.5), ValueError, "sparsity"),
    row("prune-sparsity-above-1", lambda m: rk.prune(m, sparsity=1.5), ValueError, "sparsity"),
    row("prune-threshold-nan", lambda m: rk.prune(m, threshold=float("nan")), ValueError, "threshold"),
    row("prune-threshold-str", lambda m: rk.prune(m, threshold="0.1"), TypeError, "threshold"),
    row("prune-granularity-typo", lambda m: rk.prune(m, sparsity=0.5, granularity="units"), ValueError, "granularity"),
    row("prune-nonfinite-sparsity", lambda m: rk.prune(m, sparsity=0.5), ValueError, "NaN or inf",
        prepare=with_nonfinite),
    row("prune-nonfinite-threshold", lambda m: rk.prune(m, threshold=0.1), ValueError, "hidden0",
        prepare=with_nonfinite),
    row("holdzeros-variable-array", lambda m: rk.pruning.HoldZeros(np.zeros(3)), TypeError, "variable"),
    row("holdzeros-inner-str", lambda m: rk.pruning.HoldZeros(m.get_layer("out").kernel, inner="non_neg"), TypeError,
        "inner"),
    # sparsity_report and the monitor.
    row("report-threshold-str", lambda m: rk.sparsity_report(m, threshold="0.1"), TypeError, "threshold"),
    row("report-threshold-inf", lambda m: rk.sparsity_report(m, threshold=math.inf), ValueError, "threshold"),
    row("monitor-threshold-negative", lambda m: rk.callbacks.SparsityMonitor(threshold=-1.0), ValueError, "threshold"),
    row("monitor-target-above-1", lambda m: rk.callbacks.SparsityMonitor(target_sparsity=1.5), ValueError,
     "target_sparsity"),
    row("monitor-update_freq-str", lambda m: rk.callbacks.SparsityMonitor(update_freq="batch"), ValueError,
     "update_freq"),
    row("monitor-update_freq-zero", lambda m: rk.callbacks.SparsityMonitor(update_freq=0), ValueError, "update_freq"),
    row("monitor-histogram-no-log_dir", lambda m: rk.callbacks.SparsityMonitor(histogram_freq=1), ValueError,
     "log_dir"),
    row("monitor-log_dir-int", lambda m: rk.callbacks.SparsityMonitor(histogram_freq=1, log_dir=5), TypeError,
        "log_dir"),
    row("monitor-print_every-zero", lambda m: rk.callbacks.SparsityMonitor(print_every=0), ValueError, "print_every"),
    row("scheduler-update_freq-typo", lambda m: rk.callbacks.RegularizationScheduler("epochs"), ValueError,
     "update_freq"),
    # The shrink (the old `penalty=`, `relative=`, `fine_tune_epochs=` are gone: named as unknown).
    row("phase-penalty-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, penalty=keras.regularizers.L1),
     TypeError, "penalty"),
    row("phase-relative-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, relative="False"), TypeError,
     "relative"),
    row("phase-fine_tune_epochs-gone", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, fine_tune_epochs=3),
     TypeError, "fine_tune_epochs"),
    row("phase-no-start", lambda m: rk.callbacks.ShrinkPhase(sparsity=0.5), ValueError, "start_epoch"),
    row("phase-start-negative", lambda m: rk.callbacks.ShrinkPhase(start_epoch=-1, sparsity=0.5), ValueError,
     "start_epoch"),
    row("phase-sparsity-above-1", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=1.5), ValueError,
     "sparsity"),
    row("phase-granularity-typo", lambda m: rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=0.5, granularity="unit "),
     ValueError, "granularity"),
    row("shrink-not-compiled", lambda m: rk.shrink(m, *tiny_data(), sparsity=0.5), ValueError, "compile"),
    row("shrink-epochs-zero", lambda m: rk.shrink(m, *tiny_data(), sparsity=0.5, epochs=0), ValueError,
     "epochs", prepare=compiled),
    row("shrink-tolerance-no-validation", lambda m: rk.shrink(m, *tiny_data()), ValueError,
     "validation_data", prepare=compiled),
    # fit ended by the phase's error (its monitored metric is missing): nothing of the phase stays.
    row("phase-monitor-missing-in-fit", lambda m: m.fit(
        *tiny_data(), epochs=2, verbose=0, callbacks=[rk.callbacks.ShrinkPhase(patience=1, sparsity=0.5)]),
        ValueError, "val_loss", prepare=frozen_optimizer),
    # The hang: a dataset that repeats forever, without steps_per_epoch.
    row("shrink-infinite-dataset", lambda m: rk.shrink(m, infinite_dataset(), sparsity=0.5), ValueError,
     "steps_per_epoch", prepare=compiled),
]


def snapshot(model):
    """Everything a failed call must leave as it was."""
    return [
        (
            v.path,
            keras.ops.convert_to_numpy(v.value).copy(),
            getattr(v, "regularizer", None),
            getattr(v, "constraint", None),
        )
        for v in model.weights
    ] + [(layer.name, getattr(layer, "kernel_regularizer", None)) for layer in model.layers]


def assert_unchanged(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        if len(a) == 2:
            assert a[0] == b[0] and a[1] is b[1], f"{a[0]}: kernel_regularizer changed"
            continue
        path, value, regularizer, constraint = a
        assert path == b[0]
        np.testing.assert_array_equal(value, b[1], err_msg=f"{path} changed")
        assert regularizer is b[2], f"{path}: regularizer changed"
        assert constraint is b[3], f"{path}: constraint changed"


@pytest.mark.parametrize("call, error, fragment, prepare", ERRORS)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    model = model_under_test()
    if prepare is not None:
        prepare(model)
    before = snapshot(model)
    with pytest.raises(error) as raised:
        call(model)
    assert fragment in str(raised.value), str(raised.value)
    assert_unchanged(before, snapshot(model))


# --- inputs that used to give a wrong result silently ---------------------


def nan_inf_kernel_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, name="d")])
    model.get_layer("d").kernel.assign(np.array([[np.nan, np.inf], [1.0, 2.0]], "float32"))
    return model


def right_nan_is_not_a_zero():
    report = rk.sparsity_report(nan_inf_kernel_model())
    assert (report.total.zeros, report.total.nonfinite, report.total.sparsity) == (0, 2, 0.0)


def right_nan_does_not_stop_training_at_target_sparsity():
    model = nan_inf_kernel_model()
    model.stop_training = False  # as fit sets it
    monitor = rk.callbacks.SparsityMonitor(target_sparsity=0.5)
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["sparsity"] == 0.0 and logs["nonfinite"] == 2
    assert not model.stop_training


def right_cli_inspect_counts_nan_as_nonfinite(tmp_path, capsys):
    import json

    from keras_regkit import cli

    path = str(tmp_path / "m.keras")
    nan_inf_kernel_model().save(path)
    assert cli.main(["inspect", path, "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["zeros"], total["nonfinite"], total["sparsity"]) == (0, 2, 0.0)


def right_real_booleans_are_taken():
    model = model_under_test()
    assert rk.sparsity_report(model, relative=np.bool_(True)).relative is True
    assert rk.sparsity_report(model, relative=False).relative is False
    monitor = rk.callbacks.SparsityMonitor(per_layer=np.bool_(False))
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert not any("/" in key for key in logs)  # per_layer=False: totals only


def right_selector_returning_numpy_bool_selects():
    model = model_under_test()
    attached = rk.apply_regularizers(model, {lambda layer: np.bool_(layer.name == "out"): L1(0.1)})
    assert [ref.path for ref in attached.refs] == ["out"]


def right_built_after_the_message_works():
    model = unbuilt()
    model(np.ones((1, 3), "float32"))  # what the message says to do
    assert [ref.path for ref in rk.apply_regularizers(model, {"d": L1(0.1)}).refs] == ["d"]
    assert rk.dead_units(model) == {"d": (0, 4), model.layers[1].name: (0, 2)}


def right_release_zeros_on_unbuilt_model_releases_nothing():
    assert rk.release_zeros(unbuilt()) == 0


def right_negative_schedule_switches_the_penalty_off():
    # PolynomialDecay(0.1, 100, -0.1) crosses 0 at step 50: clipped there, never a reward.
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 100, -0.1)
    ones = keras.ops.ones((2, 2))
    assert float(L1(schedule, step=25)(ones)) == pytest.approx(0.2)
    for step in (50, 75, 100, 1000):
        regularizer = L1(schedule, step=step)
        assert regularizer.current_strengths() == {"alpha": 0.0}
        assert float(regularizer(ones)) == 0.0


def right_cli_refuses_a_plot_it_cannot_write_before_any_work(capsys):
    from keras_regkit import cli

    assert cli.main(["demo", "--quick", "--plot", "/no/such/dir/p.png"]) == 1
    assert "cannot write plot '/no/such/dir/p.png'" in capsys.readouterr().err


def right_a_kind_named_twice_counts_once():
    model = model_under_test()
    once = rk.sparsity_report(model, weights="kernel").total.params
    assert rk.sparsity_report(model, weights=["kernel", "kernel"]).total.params == once
    assert rk.prune(model, threshold=0.0, weights=("kernel", "kernel")).params == once


def right_delayed_ramp_is_exact_past_2_24_steps():
    # float32 holds 2**24 + 1 as 2**24: the ramp would switch on a step early.
    ramp = DelayedRamp(1.0, delay_steps=2**24 + 1, ramp_steps=0)
    assert float(ramp(2**24)) == 0.0 and float(ramp(2**24 + 1)) == 1.0
    assert L1(ramp, step=2**24).current_strengths() == {"alpha": 0.0}


def right_start_epoch_after_the_last_epoch_is_said():
    model = frozen_optimizer(model_under_test())
    before = snapshot(model)
    with pytest.warns(UserWarning, match=r"start_epoch=5\) will not start"):
        phase = rk.callbacks.ShrinkPhase(start_epoch=5, sparsity=0.5)
        model.fit(*tiny_data(), epochs=2, verbose=0, callbacks=[phase])
    assert_unchanged(before, snapshot(model))  # nothing happened, and that was said


def right_cli_inspect_of_an_unbuilt_model_says_build_it(tmp_path, capsys):
    from keras_regkit import cli

    import warnings

    path = str(tmp_path / "unbuilt.keras")
    with warnings.catch_warnings():  # Keras' own "not yet been built": the point here
        warnings.simplefilter("ignore")
        unbuilt().save(path)
    assert cli.main(["inspect", path]) == 1
    assert "build the model first" in capsys.readouterr().err


def right_frozen_layer_penalty_warns():
    # Keras adds no penalty for a frozen layer: attaching one must say so.
    model = model_under_test()
    model.get_layer("out").trainable = False
    with pytest.warns(UserWarning, match="frozen"):
        attached = rk.apply_regularizers(model, {"out": L1(0.1)})
    assert [ref.path for ref in attached.refs] == ["out"]


def right_combined_of_serializable_parts_round_trips():
    combined = Combined([L1(S), keras.regularizers.L2(0.1), registered_fn])
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(combined))
    w = keras.ops.ones((2, 2))
    assert float(again(w)) == pytest.approx(float(combined(w)))


def right_custom_objects_loads_every_class_of_ours(tmp_path):
    objects = rk.custom_objects()
    ours = {name for name in keras.saving.get_custom_objects() if name.startswith("keras_regkit>")}
    assert set(objects) == ours and "keras_regkit>L1" in ours and "keras_regkit>Combined" in ours
    model = tiny_mlp(kernel_regularizer=Combined([L1(S), ExpAbs(0.1)]))
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, custom_objects=objects)
    assert repr(reloaded.get_layer("out").kernel_regularizer) == repr(model.get_layer("out").kernel_regularizer)


RIGHT = [
    right_nan_is_not_a_zero,
    right_nan_does_not_stop_training_at_target_sparsity,
    right_cli_inspect_counts_nan_as_nonfinite,
    right_cli_refuses_a_plot_it_cannot_write_before_any_work,
    right_cli_inspect_of_an_unbuilt_model_says_build_it,
    right_real_booleans_are_taken,
    right_selector_returning_numpy_bool_selects,
    right_built_after_the_message_works,
    right_release_zeros_on_unbuilt_model_releases_nothing,
    right_negative_schedule_switches_the_penalty_off,
    right_frozen_layer_penalty_warns,
    right_delayed_ramp_is_exact_past_2_24_steps,
    right_start_epoch_after_the_last_epoch_is_said,
    right_a_kind_named_twice_counts_once,
    right_combined_of_serializable_parts_round_trips,
    right_custom_objects_loads_every_class_of_ours,
]


@pytest.mark.parametrize("check", RIGHT, ids=lambda check: check.__name__[len("right_"):])
def test_unusual_input_gives_the_right_result(check, request):
    import inspect

    fixtures = {name: request.getfixturevalue(name) for name in inspect.signature(check).parameters}
    check(**fixtures)


def test_readme_says_import_keras_regkit_before_load_model():
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert "import keras_regkit" in readme and "custom_objects()" in readme


def test_lead_rows_shrink_callbacks_none_verbose_and_an_empty_mapping():
    # Siblings found late: each gets a clear answer at the call.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="verbose"):
        rk.callbacks.ShrinkPhase(start_epoch=0, sparsity=0.5, verbose="1")
    with pytest.raises(ValueError, match="regularizers.*empty"):
        rk.apply_regularizers(model, {})
    assert model.losses == []
    model.compile("adam", "mse")
    x = np.zeros((8, 4), "float32")
    result = rk.shrink(model, x, np.zeros((8, 2), "float32"), sparsity=0.5, epochs=1, callbacks=None)
    assert result.sparsity == pytest.approx(0.5)
