import csv
import os
import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import SparsityMonitor
from keras_regkit.regularizers import L1

from conftest import (
    assert_refused_and_unchanged,
    assert_round_trip,
    model_under_test,
    nan_inf_kernel_model,
    right_checks,
    row,
    run_with_fixtures,
    tiny_data,
    tiny_mlp,
)


class ZeroOneColumnPerEpoch(keras.callbacks.Callback):
    """Zeroes one more column of `hidden0`'s kernel at each epoch start, so
    the expected sparsity is known exactly (the learning rate is 0)."""

    def on_epoch_begin(self, epoch, logs=None):
        kernel = self.model.get_layer("hidden0").kernel
        value = keras.ops.convert_to_numpy(kernel)
        value[:, : epoch + 1] = 0.0
        kernel.assign(value)


def frozen(model):
    model.compile(keras.optimizers.SGD(0.0), "mse")
    return model


def test_logs_exact_sparsity_per_layer_and_total_into_history():
    model = frozen(tiny_mlp(units=(8, 4)))
    x, y = tiny_data()
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[ZeroOneColumnPerEpoch(), SparsityMonitor()])
    h = history.history
    assert h["sparsity/hidden0"] == pytest.approx([1 / 8, 2 / 8, 3 / 8])
    assert h["sparsity"] == pytest.approx([6 * k / (48 + 32) for k in (1, 2, 3)])
    assert h["sparsity/out"] == [0.0, 0.0, 0.0]
    assert h["nonfinite"] == [0, 0, 0]
    out_kernel = keras.ops.convert_to_numpy(model.get_layer("out").kernel)
    assert h["l1_norm/out"][-1] == pytest.approx(np.abs(out_kernel).sum(), rel=1e-6)
    assert {"near_zero", "near_zero/hidden0", "l2_norm", "l2_norm/out"} <= set(h)


def test_penalty_training_shows_up_as_smaller_norms_than_without():
    x, y = tiny_data()
    final = {}
    for name, regularizer in [("plain", None), ("l1", L1(0.3))]:
        keras.utils.set_random_seed(3)
        model = tiny_mlp(kernel_regularizer=regularizer)
        model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(x, y, epochs=8, verbose=0, callbacks=[SparsityMonitor(per_layer=False)])
        final[name] = history.history["l1_norm"][-1]
    assert final["l1"] < 0.9 * final["plain"]


class BatchLogSpy(keras.callbacks.Callback):
    """Records, per reported batch, whether its logs carry the statistics."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append("sparsity" in logs)


def test_every_n_batches_updates_batch_logs():
    model = frozen(tiny_mlp())
    x, y = tiny_data(n=64)
    spy = BatchLogSpy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[SparsityMonitor(update_freq=3), spy])
    assert spy.seen == [(b + 1) % 3 == 0 for b in range(8)]


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="Keras' PyTorch trainer allows only steps_per_execution=1")
def test_every_n_batches_with_steps_per_execution():
    model = tiny_mlp()
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=4)
    x, y = tiny_data(n=128)
    spy = BatchLogSpy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[SparsityMonitor(update_freq=3), spy])
    assert len(spy.seen) == 4 and all(spy.seen)  # batches reported every 4 >= 3


def test_target_sparsity_stops_training():
    model = frozen(tiny_mlp(units=(8, 4)))
    x, y = tiny_data()
    history = model.fit(
        x, y, epochs=10, verbose=0,
        callbacks=[ZeroOneColumnPerEpoch(), SparsityMonitor(target_sparsity=0.2)],
    )
    assert len(history.history["loss"]) == 3  # 18 / 80 >= 0.2 after epoch 3


def test_target_sparsity_is_checked_at_batch_updates_too():
    model = frozen(tiny_mlp())
    rk.prune(model, sparsity=0.6)
    x, y = tiny_data(n=64)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[SparsityMonitor(update_freq=2, target_sparsity=0.5), Spy()])
    assert seen == [0, 1]


def test_verbose_table_and_csv_logger(tmp_path, capsys):
    model = frozen(tiny_mlp())
    x, y = tiny_data()
    log = tmp_path / "log.csv"
    model.fit(x, y, epochs=2, verbose=0, callbacks=[SparsityMonitor(verbose=1, print_every=2), keras.callbacks.CSVLogger(str(log))])
    out = capsys.readouterr().out
    assert out.count("weight sparsity") == 1 and "Epoch 2" in out and "hidden0" in out
    header = next(csv.reader(log.open()))
    assert "sparsity/hidden0" in header and "l2_norm/out" in header


def test_all_weights_covers_biases():
    model = frozen(tiny_mlp())
    x, y = tiny_data()
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[SparsityMonitor(weights="all")])
    assert history.history["sparsity/out/bias"] == [1.0]  # zero-initialised


def test_histograms_go_to_tensorboard(tmp_path):
    model = frozen(tiny_mlp())
    x, y = tiny_data()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[SparsityMonitor(histogram_freq=1, log_dir=str(tmp_path))])
    import tensorflow as tf

    files = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path)]
    tags = {v.tag for f in files for e in tf.compat.v1.train.summary_iterator(f) for v in e.summary.value}
    assert tags == {"weight_magnitude/hidden0", "weight_magnitude/out"}


@pytest.mark.parametrize("kwargs,error,match", [
    ({"update_freq": "batch"}, ValueError, "update_freq"),
    ({"update_freq": 0}, ValueError, "update_freq"),
    ({"target_sparsity": 1.5}, ValueError, "target_sparsity"),
    ({"threshold": -0.1}, ValueError, "threshold"),
    ({"print_every": 0}, ValueError, "print_every"),
    ({"histogram_freq": 1}, ValueError, "log_dir"),
    ({"weights": "kernels"}, ValueError, "argument `weights`"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SparsityMonitor(**kwargs)


def test_round_trips():
    restored = assert_round_trip(SparsityMonitor(weights=["kernel", "bias"], threshold=0.01, update_freq=5))
    assert restored.update_freq == 5
    assert assert_round_trip(SparsityMonitor(pattern="2:4")).pattern == "2:4"
    with pytest.raises(ValueError, match=r"unknown keys \['every'\]"):
        SparsityMonitor.from_config({"every": 5})


@pytest.mark.parametrize("kwargs, name, runs", [
    (dict(verbose=1, print_every=4), "print_every=4", "3 epochs"),
    (dict(histogram_freq=4, log_dir="LOG_DIR"), "histogram_freq=4", "3 epochs"),
    (dict(update_freq=5), "update_freq=5", "4 batches per epoch"),
])
def test_warns_at_train_begin_when_an_interval_is_past_the_end(tmp_path, capsys, kwargs, name, runs):
    kwargs = {k: str(tmp_path) if v == "LOG_DIR" else v for k, v in kwargs.items()}
    model = frozen(tiny_mlp())
    with pytest.warns(UserWarning, match=rf"SparsityMonitor\({name}\) .* runs {runs}\. Pass .* <= \d") as record:
        model.fit(*tiny_data(), epochs=3, batch_size=8, verbose=0, callbacks=[SparsityMonitor(**kwargs)])
    assert len([w for w in record if "SparsityMonitor(" in str(w.message)]) == 1
    assert "weight sparsity" not in capsys.readouterr().out


@pytest.mark.parametrize("kwargs", [dict(verbose=1, print_every=3), dict(verbose=0, print_every=4), dict(update_freq=4)])
def test_no_interval_warning_where_the_interval_fits_or_prints_nothing_anyway(kwargs, capsys):
    model = frozen(tiny_mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(*tiny_data(), epochs=3, batch_size=8, verbose=0, callbacks=[SparsityMonitor(**kwargs)])
    assert ("weight sparsity" in capsys.readouterr().out) == bool(kwargs.get("verbose"))


# -- bad and unusual input: the tables' helpers are in conftest -----------------

BAD_INPUT = [
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("monitor-per_layer-str", lambda m: rk.callbacks.SparsityMonitor(per_layer="no"), TypeError, "per_layer"),
    row("monitor-relative-str", lambda m: rk.callbacks.SparsityMonitor(relative="False"), TypeError, "relative"),
    row("monitor-verbose-str", lambda m: rk.callbacks.SparsityMonitor(verbose="1"), TypeError, "verbose"),
    # Weight kinds.
    row("monitor-weights-typo", lambda m: rk.callbacks.SparsityMonitor(weights="kernels"), ValueError, "weights"),
    # Thresholds and intervals.
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
    # N:M patterns (issue #37): the error names `pattern`, the argument given, never `granularity`.
    row("monitor-pattern-letters", lambda m: rk.callbacks.SparsityMonitor(pattern="a:b"), ValueError,
        "Invalid value for argument `pattern`: expected 'N:M' (e.g. '2:4'"),
    row("monitor-pattern-n-equals-m", lambda m: rk.callbacks.SparsityMonitor(pattern="4:4"), ValueError,
        "argument `pattern`: in 'N:M', N must be at least 1 and below M (keep N of every M). Received: pattern='4:4'"),
    row("monitor-pattern-zero-n", lambda m: rk.callbacks.SparsityMonitor(pattern="0:2"), ValueError, "pattern='0:2'"),
    row("monitor-pattern-n-above-m", lambda m: rk.callbacks.SparsityMonitor(pattern="8:4"), ValueError,
        "pattern='8:4'"),
    row("monitor-pattern-int", lambda m: rk.callbacks.SparsityMonitor(pattern=4), ValueError, "pattern=4"),
    row("monitor-pattern-three-parts", lambda m: rk.callbacks.SparsityMonitor(pattern="2:4:8"), ValueError,
        "pattern='2:4:8'"),
    row("monitor-pattern-granularity-name", lambda m: rk.callbacks.SparsityMonitor(pattern="unit"), ValueError,
        "pattern='unit'"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


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


def right_a_pattern_object_or_padded_numbers_are_logged_and_saved_as_n_m():
    from keras_regkit.pruning import NM

    assert SparsityMonitor(pattern=NM(2, 4)).pattern == "2:4"
    assert SparsityMonitor(pattern="02:04").get_config()["pattern"] == "2:4"
    assert rk.sparsity_report(model_under_test(), pattern=NM(1, 2)).pattern == "1:2"
    assert str(rk.sparsity_report(model_under_test(), pattern=NM(1, 2))).splitlines()[0].endswith("1:2")


RIGHT = right_checks(
    right_nan_does_not_stop_training_at_target_sparsity,
    right_a_pattern_object_or_padded_numbers_are_logged_and_saved_as_n_m,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
