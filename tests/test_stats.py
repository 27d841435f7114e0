import json
import math

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L1
from keras_regkit.stats import WeightStats

from conftest import (
    SubclassedModel,
    assert_refused_and_unchanged,
    model_under_test,
    nan_inf_kernel_model,
    right_checks,
    row,
    run_with_fixtures,
    tiny_mlp,
    unbuilt,
)


def model_with_known_weights():
    model = tiny_mlp(units=(8, 4))
    kernel = np.linspace(-1, 1, 48).reshape(6, 8).astype("float32")
    kernel[:, :3] = 0.0  # 18 exact zeros
    kernel[0, 3] = 5e-4  # one near-zero that is not zero
    model.get_layer("hidden0").kernel.assign(kernel)
    return model, kernel


def test_statistics_match_numpy_reference():
    model, kernel = model_with_known_weights()
    rk.apply_regularizers(model, {"hidden0": L1(0.1)})
    report = rk.sparsity_report(model)
    hidden = report.layers[0]
    assert hidden.name == "hidden0" and hidden.params == 48
    assert hidden.zeros == 18 and hidden.near_zero == 19
    assert hidden.l1 == pytest.approx(np.abs(kernel).sum(), rel=1e-6)
    assert hidden.l2 == pytest.approx(np.sqrt((kernel.astype("float64") ** 2).sum()), rel=1e-6)
    assert hidden.regularizer == "L1(alpha=0.1)"
    out_kernel = keras.ops.convert_to_numpy(model.get_layer("out").kernel)
    assert report.total.params == 48 + out_kernel.size
    assert report.total.zeros == 18 + int((out_kernel == 0).sum())
    assert report.total.l2 == pytest.approx(np.sqrt(hidden.l2**2 + (out_kernel.astype("float64") ** 2).sum()), rel=1e-6)


def test_relative_threshold_scales_with_each_weight():
    model, kernel = model_with_known_weights()
    rms = np.sqrt(np.mean(kernel.astype("float64") ** 2))
    hidden = rk.sparsity_report(model, threshold=0.2, relative=True).layers[0]
    assert hidden.near_zero == int((np.abs(kernel) <= 0.2 * rms).sum())
    assert hidden.near_zero > 19


def test_counts_nonfinite_entries_and_keeps_norms_finite():
    model, kernel = model_with_known_weights()
    kernel[1, 4:6] = [np.nan, np.inf]
    model.get_layer("hidden0").kernel.assign(kernel)
    hidden = rk.sparsity_report(model).layers[0]
    assert hidden.nonfinite == 2
    assert np.isfinite(hidden.l1) and np.isfinite(hidden.l2)
    # NaN and inf are not zeros, nor near-zeros: a diverged model is not sparse.
    assert hidden.zeros == 18 and hidden.near_zero == 19


def test_counts_stay_exact_beyond_float32_integer_range():
    # 2**24 + 1 zeros: not representable in float32 (it rounds to 2**24).
    layer = keras.layers.Embedding(2**24 + 1, 1, embeddings_initializer="zeros")
    model = keras.Sequential([keras.Input((1,), dtype="int32"), layer])
    stats = WeightStats(model, "embeddings").compute()[0]
    assert stats.params == stats.zeros == stats.near_zero == 2**24 + 1


def test_all_weights_and_str_table():
    model, _ = model_with_known_weights()
    report = rk.sparsity_report(model, weights="all")
    assert [s.name for s in report.layers] == ["hidden0", "hidden0/bias", "out", "out/bias"]
    table = str(report)
    assert table.splitlines()[0].split()[:3] == ["weight", "params", "zeros"]
    assert "37.5%" in table  # hidden0: 18 / 48 zeros
    assert table.splitlines()[-1].startswith("total")
    assert json.loads(json.dumps(report.to_dict()))["total"]["params"] == report.total.params


@pytest.mark.parametrize("kwargs,error", [
    ({"threshold": -1.0}, ValueError),
    ({"threshold": "small"}, TypeError),
    ({"weights": "kernels"}, ValueError),
])
def test_bad_arguments(kwargs, error):
    model, _ = model_with_known_weights()
    with pytest.raises(error, match=f"argument `{next(iter(kwargs))}`"):
        rk.sparsity_report(model, **kwargs)


def test_model_without_such_weights_is_an_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"no weight of kind \['embeddings'\]"):
        rk.sparsity_report(model, weights="embeddings")


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_host_and_device_paths_agree(relative, dtype):
    # On a CPU `compute` reads the weights in place with NumPy; an accelerator
    # uses the compiled path. Both must give the same figures.
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(300, dtype=dtype), keras.layers.Dense(4, dtype=dtype)])
    kernel = np.random.default_rng(0).normal(scale=0.01, size=(6, 300)).astype("float32")
    kernel[:, :50] = 0.0
    kernel[0, 50:53] = [np.nan, np.inf, -np.inf]
    model.layers[0].kernel.assign(kernel.astype(model.layers[0].kernel.dtype))
    stats = WeightStats(model, "all", threshold=0.5 if relative else 1e-3, relative=relative)
    values = [ref.variable.value for ref in stats.refs]
    host, device = stats._compute_on_host(values), stats._compute_on_device(values)
    for h, d in zip(host, device):
        assert (h.name, h.params, h.zeros, h.near_zero, h.nonfinite) == (d.name, d.params, d.zeros, d.near_zero, d.nonfinite)
        assert h.l1 == pytest.approx(d.l1, rel=1e-5) and h.l2 == pytest.approx(d.l2, rel=1e-5)
    assert host[0].zeros == 300 and host[0].nonfinite == 3


def _feature_model(first=keras.layers.Dense):
    inputs = keras.Input((6,), name="features")
    x = keras.layers.Normalization()(inputs)
    x = keras.layers.Dropout(0.1)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(first(4, name="first")(x)))
    return model


def test_report_names_the_input_features_no_weight_reads():
    model = _feature_model()
    kernel = np.ones((6, 4), "float32")
    kernel[[1, 4]] = 0.0
    kernel[2, 0] = 0.0  # one zero is not a dropped feature
    model.get_layer("first").kernel.assign(kernel)
    report = rk.sparsity_report(model)
    assert report.dropped_inputs == {"features": ([1, 4], 6)}
    assert report.to_dict()["dropped_inputs"] == {"features": {"dropped": [1, 4], "features": 6}}
    assert "input 'features': 2 of 6 features dropped (no weight reads them): [1, 4]" in str(report)


def test_a_feature_is_dropped_only_when_every_dense_layer_reading_it_drops_it():
    inputs = keras.Input((5,), name="features")
    left = keras.layers.Dense(3, name="left")(inputs)
    right = keras.layers.Dense(3, name="right")(keras.layers.Dropout(0.1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([left, right])))
    left_kernel, right_kernel = np.ones((5, 3), "float32"), np.ones((5, 3), "float32")
    left_kernel[[0, 1, 3]] = 0.0  # 0 and 3: the right branch still reads them
    right_kernel[[1, 2, 4]] = 0.0  # 2 and 4: the left branch still reads them
    model.get_layer("left").kernel.assign(left_kernel)
    model.get_layer("right").kernel.assign(right_kernel)
    assert rk.sparsity_report(model).dropped_inputs == {"features": ([1], 5)}


def test_an_input_read_by_a_layer_other_than_dense_is_left_out_of_the_feature_report():
    inputs = keras.Input((6,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.LayerNormalization()(inputs)))
    model.layers[-1].kernel.assign(np.zeros((6, 2), "float32"))
    assert rk.sparsity_report(model).dropped_inputs == {}
    assert "dropped" not in str(rk.sparsity_report(model))


def test_a_subclassed_model_has_no_feature_report():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(np.ones((1, 3), "float32"))
    assert rk.sparsity_report(model).dropped_inputs is None


# -- bad and unusual input: the tables' helpers are in conftest -----------------

class Scale(keras.layers.Layer):
    """A user's layer with one weight `w`, declared by `regkit_weights`."""

    declared = {"kernel": ("w", "w_regularizer")}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w_regularizer = self.b_regularizer = None

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 8), name="w")
        self.alias = self.w

    def call(self, x):
        return keras.ops.matmul(x, self.w)

    def regkit_weights(self):
        return self.declared


def declaring(declared):
    layer = Scale(name="scale")
    layer.declared = declared
    model = keras.Sequential([keras.Input((6,)), layer, keras.layers.Dense(16, name="out")])
    return model


BAD_INPUT = [
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("report-relative-str", lambda m: rk.sparsity_report(m, relative="False"), TypeError, "relative"),
    row("report-relative-none", lambda m: rk.sparsity_report(m, relative=None), TypeError, "relative"),
    row("report-relative-int", lambda m: rk.sparsity_report(m, relative=1), TypeError, "relative"),
    # A model that is not built has no weights: say so, don't blame the selector.
    row("report-unbuilt", lambda m: rk.sparsity_report(unbuilt()), ValueError, "build the model first"),
    row("report-unbuilt-subclassed", lambda m: rk.sparsity_report(SubclassedModel()), ValueError, "build the model first"),
    # Weight kinds.
    row("report-weights-none", lambda m: rk.sparsity_report(m, weights=None), ValueError, "weights"),
    # Not a model.
    row("report-model-path", lambda m: rk.sparsity_report("model.keras"), TypeError, "model"),
    # Thresholds.
    row("report-threshold-str", lambda m: rk.sparsity_report(m, threshold="0.1"), TypeError, "threshold"),
    row("report-threshold-inf", lambda m: rk.sparsity_report(m, threshold=math.inf), ValueError, "threshold"),
    # N:M patterns (issue #37): the error names `pattern`, the argument given.
    row("report-pattern-n-equals-m", lambda m: rk.sparsity_report(m, pattern="4:4"), ValueError,
        "Invalid value for argument `pattern`: in 'N:M', N must be at least 1 and below M (keep N of every M). "
        "Received: pattern='4:4'"),
    row("report-pattern-letters", lambda m: rk.sparsity_report(m, pattern="a:b"), ValueError,
        "argument `pattern`: expected 'N:M' (e.g. '2:4'"),
    row("report-pattern-zero-n", lambda m: rk.sparsity_report(m, pattern="0:4"), ValueError, "pattern='0:4'"),
    row("report-pattern-n-above-m", lambda m: rk.sparsity_report(m, pattern="4:2"), ValueError, "pattern='4:2'"),
    row("report-pattern-spaces", lambda m: rk.sparsity_report(m, pattern=" 2:4"), ValueError, "pattern=' 2:4'"),
    row("report-pattern-empty", lambda m: rk.sparsity_report(m, pattern=""), ValueError, "pattern=''"),
    row("report-pattern-tuple", lambda m: rk.sparsity_report(m, pattern=(2, 4)), ValueError, "pattern=(2, 4)"),
    row("report-pattern-fraction", lambda m: rk.sparsity_report(m, pattern=0.5), ValueError, "pattern=0.5"),
    row("report-pattern-granularity-name", lambda m: rk.sparsity_report(m, pattern="weight"), ValueError,
        "pattern='weight'"),
    # A user's layer giving one variable as two kinds would be counted twice (240 parameters of 192).
    row("report-declared-twice", lambda m: rk.sparsity_report(
        declaring({"kernel": ("w", "w_regularizer"), "bias": ("w", "b_regularizer")}), "all"), TypeError,
        "Layer 'scale' (Scale): what `regkit_weights()` returns: the variable attribute 'w' is given to several "
        "weight kinds ['kernel', 'bias']"),
    row("report-declared-aliased", lambda m: rk.sparsity_report(
        declaring({"kernel": ("w", "w_regularizer"), "bias": ("alias", "b_regularizer")}), "all"), TypeError,
        "Layer 'scale' (Scale) gives its variable"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_nan_is_not_a_zero():
    report = rk.sparsity_report(nan_inf_kernel_model())
    assert (report.total.zeros, report.total.nonfinite, report.total.sparsity) == (0, 2, 0.0)


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


def right_a_kind_named_twice_counts_once():
    model = model_under_test()
    once = rk.sparsity_report(model, weights="kernel").total.params
    assert rk.sparsity_report(model, weights=["kernel", "kernel"]).total.params == once
    assert rk.prune(model, threshold=0.0, weights=("kernel", "kernel")).params == once


def right_no_message_about_patterns_blames_granularity():
    for pattern in ("4:4", "a:b", "0:4", "2:4:8"):
        with pytest.raises(ValueError) as raised:
            rk.sparsity_report(model_under_test(), pattern=pattern)
        assert "granularity" not in str(raised.value)
        with pytest.raises(ValueError) as raised:
            rk.callbacks.SparsityMonitor(pattern=pattern)
        assert "granularity" not in str(raised.value)


def right_a_declared_weight_of_one_kind_counts_once():
    model = declaring({"kernel": ("w", "w_regularizer")})
    assert rk.sparsity_report(model, "all").total.params == model.count_params() == 6 * 8 + 8 * 16 + 16


RIGHT = right_checks(
    right_no_message_about_patterns_blames_granularity,
    right_a_declared_weight_of_one_kind_counts_once,
    right_nan_is_not_a_zero,
    right_real_booleans_are_taken,
    right_a_kind_named_twice_counts_once,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
