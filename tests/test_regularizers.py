import math
import re

import keras
import ml_dtypes
import numpy as np
import pytest

from keras_regkit import _penalty_math as penalty_math
from keras_regkit import regularizers as R
from keras_regkit.schedules import DelayedRamp

from conftest import (
    SERIALIZABLE_SCHEDULE,
    assert_refused_and_unchanged,
    assert_round_trip,
    right_checks,
    row,
    run_with_fixtures,
    value_and_grad,
)

RNG = np.random.default_rng(0)
DEFAULT_FUSED_FROM = penalty_math.FUSED_FROM


@pytest.fixture(autouse=True)
def fuse_every_weight(monkeypatch):
    # Under TensorFlow only weights of 65,536 entries and more use the fused
    # kernels in a traced step; here every one does, so each test below
    # checks them on small weights as well.
    monkeypatch.setattr(penalty_math, "FUSED_FROM", 0)
W = RNG.normal(scale=0.5, size=(7, 5)).astype("float32")
W[0, 0] = 0.0


def expabs_numpy(w, alpha, scale):
    w = w.astype("float64")
    return alpha * np.sum(np.expm1(np.abs(w) / scale)), alpha / scale * np.sign(w) * np.exp(
        np.abs(w) / scale
    )


def group_lasso_numpy(w, alpha, axis):
    moved = np.moveaxis(w.astype("float64"), axis, -1)
    groups = moved.reshape(-1, moved.shape[-1])  # one column per group
    norms = np.sqrt((groups**2).sum(axis=0))
    factor = alpha * np.sqrt(groups.shape[0])
    grad = factor * groups / np.where(norms > 0, norms, 1.0)
    return factor * norms.sum(), np.moveaxis(grad.reshape(moved.shape), -1, axis)


REFERENCES = [
    (R.L1(0.03), lambda w: (0.03 * np.abs(w).sum(), 0.03 * np.sign(w))),
    (R.L2(0.03), lambda w: (0.03 * (w.astype("float64") ** 2).sum(), 0.06 * w)),
    (
        R.ElasticNet(l1=0.02, l2=0.05),
        lambda w: (
            0.02 * np.abs(w).sum() + 0.05 * (w.astype("float64") ** 2).sum(),
            0.02 * np.sign(w) + 0.1 * w,
        ),
    ),
    (R.ExpAbs(0.03), lambda w: expabs_numpy(w, 0.03, 1.0)),
    (R.ExpAbs(0.03, scale=0.25), lambda w: expabs_numpy(w, 0.03, 0.25)),
    (R.GroupLasso(0.03), lambda w: group_lasso_numpy(w, 0.03, axis=-1)),
    (R.GroupLasso(0.03, axis=0), lambda w: group_lasso_numpy(w, 0.03, axis=0)),
]


@pytest.mark.parametrize("reg,reference", REFERENCES, ids=lambda r: repr(r)[:30])
def test_value_and_gradient_match_numpy_reference(reg, reference):
    value, grad = value_and_grad(reg, W)
    ref_value, ref_grad = reference(W)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (R.L1(0.013), keras.regularizers.L1(0.013)),
        (R.L2(0.013), keras.regularizers.L2(0.013)),
        (R.ElasticNet(0.01, 0.02), keras.regularizers.L1L2(l1=0.01, l2=0.02)),
    ],
)
def test_equals_keras_builtin_at_same_strength(ours, theirs):
    ours_value, ours_grad = value_and_grad(ours, W)
    theirs_value, theirs_grad = value_and_grad(theirs, W)
    np.testing.assert_allclose(ours_value, theirs_value, rtol=1e-6)
    # Not at W's exact zero: there JAX's abs has gradient 1 and ours 0.
    nonzero = W != 0
    np.testing.assert_allclose(ours_grad[nonzero], theirs_grad[nonzero], rtol=1e-6)


def test_expabs_is_precise_for_tiny_weights():
    # exp(w) - 1 in float32 rounds 1e-9 to 0; expm1 keeps it.
    w = np.full((4,), 1e-9, "float32")
    value, grad = value_and_grad(R.ExpAbs(2.0), w)
    np.testing.assert_allclose(value, 2.0 * 4 * 1e-9, rtol=1e-6)
    np.testing.assert_allclose(grad, 2.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_expabs_is_finite_for_every_finite_weight(dtype):
    finfo_max = float(ml_dtypes.finfo(dtype).max)
    w = np.array(
        [0.0, 1e-8, 1.0, 11.5, 19.99, 20.01, 88.0, 89.0, 1e4, 65504.0, 1e20, 1e30, finfo_max],
        dtype="float32",
    )
    w = w[w <= finfo_max]
    w = np.concatenate([w, -w])
    tensor = keras.ops.cast(w, dtype)
    value, grad = value_and_grad(R.ExpAbs(1.0, scale=0.5), tensor)
    assert value.dtype == np.float32
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))
    # Below the linear region it is the exact exponential.
    small = np.array([0.5, 2.0], dtype)
    np.testing.assert_allclose(
        value_and_grad(R.ExpAbs(1.0), keras.ops.cast(small, dtype))[0],
        np.sum(np.expm1(small.astype("float64"))),
        rtol=1e-2 if dtype != "float32" else 1e-6,
    )


def test_expabs_keeps_growing_past_the_exponential_region():
    reg = R.ExpAbs(1.0)
    values = [float(value_and_grad(reg, np.array([w], "float32"))[0]) for w in (19.0, 20.0, 21.0, 1e10)]
    assert values == sorted(values) and len(set(values)) == 4
    # Continuous at the switch, slope exp(20) after it.
    np.testing.assert_allclose(values[2] - values[1], math.exp(20), rtol=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_penalties_are_float32_and_finite_under_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_regularizer=R.ExpAbs(1e-3), kernel_initializer=keras.initializers.Constant(30.0)),
            keras.layers.Dense(2, kernel_regularizer=R.ElasticNet(1e-3, 1e-3)),
        ]
    )
    assert model.layers[0].compute_dtype != "float32"
    model.compile(keras.optimizers.SGD(1e-12), "mse")
    losses = model.losses
    assert all(keras.backend.standardize_dtype(loss.dtype) == "float32" for loss in losses)
    history = model.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(losses[0])),
        1e-3 * 12 * (math.expm1(20.0) + math.exp(20.0) * 10.0),
        rtol=1e-4,
    )


def test_group_lasso_gradient_is_zero_not_nan_on_dead_groups():
    w = W.copy()
    w[:, 1] = 0.0  # a dead unit (e.g. pruned and held)
    value, grad = value_and_grad(R.GroupLasso(0.1), w)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, 1], 0.0)
    np.testing.assert_allclose(value, group_lasso_numpy(w, 0.1, -1)[0], rtol=1e-5)


def test_group_lasso_on_a_bias_is_l1():
    bias = np.array([0.5, -2.0, 0.0], "float32")
    value, grad = value_and_grad(R.GroupLasso(0.1), bias)
    np.testing.assert_allclose(value, 0.25, rtol=1e-6)
    np.testing.assert_allclose(grad, [0.1, -0.1, 0.0], rtol=1e-6)


def test_group_lasso_conv_groups_are_filters():
    kernel = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    kernel[..., 2] = 0.0
    value = value_and_grad(R.GroupLasso(1.0), kernel)[0]
    norms = np.sqrt((kernel.reshape(-1, 4).astype("float64") ** 2).sum(axis=0))
    np.testing.assert_allclose(value, np.sqrt(18) * norms.sum(), rtol=1e-5)


def test_group_lasso_rejects_an_axis_that_does_not_fit():
    with pytest.raises(TypeError, match="argument `axis`"):
        R.GroupLasso(0.1, axis=1.5)
    with pytest.raises(ValueError, match=r"axis=2.*shape \(7, 5\).*\[-2, 1\]"):
        R.GroupLasso(0.1, axis=2)(W)


def test_scheduled_strength_follows_the_step():
    schedule = keras.optimizers.schedules.PolynomialDecay(0.0, 10, 1.0)
    reg = R.L1(schedule)
    w = np.ones((2, 2), "float32")
    assert reg.is_scheduled and reg.step == 0
    assert float(value_and_grad(reg, w)[0]) == 0.0
    reg.set_step(5)
    assert reg.step == 5
    assert reg.current_strengths() == {"alpha": pytest.approx(0.5)}
    np.testing.assert_allclose(value_and_grad(reg, w)[0], 2.0, rtol=1e-6)


def test_elastic_net_strengths_schedule_independently():
    reg = R.ElasticNet(l1=DelayedRamp(1.0, 0, 10), l2=0.5, step=5)
    assert reg.current_strengths() == {"l1": pytest.approx(0.5), "l2": 0.5}


def test_unscheduled_regularizer_has_no_state():
    reg = R.L2(0.1)
    assert not reg.is_scheduled and reg.step == 0
    assert "step" not in reg.get_config()


SERIALIZABLE = [
    R.L1(0.1),
    R.L2(0.2),
    R.ElasticNet(0.1, 0.3),
    R.ExpAbs(0.1, scale=0.5),
    R.L1(keras.optimizers.schedules.PolynomialDecay(0.0, 100, 1e-3), step=42),
    R.ElasticNet(l1=DelayedRamp(1e-3, 10, 20), l2=keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5), step=7),
    R.ExpAbs(keras.optimizers.schedules.CosineDecay(1e-3, 100), scale=2.0, step=3),
    R.GroupLasso(0.1, axis=0),
    R.GroupLasso(DelayedRamp(1e-3, 5, 10), step=2),
]


@pytest.mark.parametrize("reg", SERIALIZABLE, ids=repr)
def test_round_trips_through_config(reg):
    restored = assert_round_trip(reg)
    assert restored.step == reg.step
    np.testing.assert_allclose(value_and_grad(restored, W)[0], value_and_grad(reg, W)[0], rtol=1e-6)


@pytest.mark.parametrize("cls", [R.L1, R.L2, R.ExpAbs, R.GroupLasso])
@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), -float("inf")])
def test_rejects_negative_nan_and_infinite_strengths(cls, bad):
    with pytest.raises(ValueError, match=r"argument `alpha`.*Received: alpha=(-?inf|nan|-0\.001)"):
        cls(bad)


@pytest.mark.parametrize("bad", ["0.1", None, [0.1], True, lambda step: 0.1])
def test_rejects_non_numeric_strengths(bad):
    with pytest.raises(TypeError, match=r"argument `l2`.*float in \[0, 3.402823e\+38\].* or a .*LearningRateSchedule"):
        R.ElasticNet(l1=0.1, l2=bad)


@pytest.mark.parametrize("make, name", [
    (lambda s: R.L1(s), "alpha"), (lambda s: R.L2(s), "alpha"), (lambda s: R.ExpAbs(s), "alpha"),
    (lambda s: R.GroupLasso(s), "alpha"), (lambda s: R.ElasticNet(l1=s), "l1"),
    (lambda s: R.ElasticNet(l2=s), "l2"), (lambda s: R.L2.from_config({"alpha": s}), "alpha"),
])
@pytest.mark.parametrize("bad", [1e300, 3.5e38])
def test_rejects_strengths_beyond_float32_that_would_make_the_penalty_inf(make, name, bad):
    with pytest.raises(ValueError, match=rf"argument `{name}`: expected a float in \[0, 3.402823e\+38\]"
                                         rf".*float32.*Received: {name}={re.escape(str(bad))}"):
        make(bad)


def test_accepts_float32s_largest_strength():
    assert R.L1(float(np.finfo("float32").max)).alpha == float(np.finfo("float32").max)


W_WITH_NAN = W.copy()
W_WITH_NAN[2, 3] = np.nan  # in group (unit) 3 along the last axis


@pytest.mark.parametrize("eager", [False, True], ids=["traced-fused-under-tf", "eager-plain"])
@pytest.mark.parametrize("reg", [r for r, _ in REFERENCES] + [keras.regularizers.L2(0.03)], ids=repr)
def test_a_weight_holding_nan_gives_a_nan_penalty_as_keras_own(reg, eager):
    value, _ = value_and_grad(reg, W_WITH_NAN, eager=eager)
    assert np.isnan(value)


@pytest.mark.parametrize("eager", [False, True], ids=["traced-fused-under-tf", "eager-plain"])
def test_group_lasso_nan_spoils_only_its_own_groups_gradient(eager):
    value, grad = value_and_grad(R.GroupLasso(0.03), W_WITH_NAN, eager=eager)
    assert np.isnan(value)
    # NaN where the NaN is, 0 in the rest of its group, on both paths.
    assert np.isnan(grad[2, 3]) and np.all(np.delete(grad[:, 3], 2) == 0)
    others = np.delete(grad, 3, axis=1)
    np.testing.assert_allclose(others, np.delete(group_lasso_numpy(W, 0.03, -1)[1], 3, axis=1), rtol=1e-5)


def test_rejects_schedule_that_cannot_be_serialized():
    class NoConfig(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1

    with pytest.raises(TypeError, match=r"argument `alpha`.*NoConfig cannot be serialized"):
        R.L1(NoConfig())


@pytest.mark.parametrize("kwargs,match", [
    ({"scale": 0.0}, "argument `scale`.*> 0.*scale=0.0"),
    ({"scale": float("nan")}, "argument `scale`.*scale=nan"),
    ({"step": -1}, r"argument `step`.*int in \[0, .*step=-1"),
    # Beyond the step variable's int ("int32" under JAX and PyTorch, int64 under TensorFlow).
    ({"step": 2**63}, r"argument `step`: expected an int in \[0, (?:2147483647|9223372036854775807)\].*step=9\d+"),
])
def test_rejects_bad_scale_and_step(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R.ExpAbs(DelayedRamp(0.1, 1, 1), **kwargs)


def test_set_step_beyond_the_step_variable_is_refused_and_changes_nothing():
    reg = R.L1(DelayedRamp(0.1, 1, 1), step=3)
    with pytest.raises(ValueError, match=r"argument `step`: expected an int in \[0, \d+\]"):
        reg.set_step(2**63)
    assert reg.step == 3


def test_rejects_non_numeric_scale():
    with pytest.raises(TypeError, match="argument `scale`"):
        R.ExpAbs(0.1, scale="big")


@pytest.mark.parametrize("cls,config", [
    (R.L1, {"alpha": 0.1, "l1": 0.2}),
    (R.ExpAbs, {"alpha": 0.1, "scael": 1.0}),
    (R.ElasticNet, {"l1": 0.1, "l2": 0.1, "alpha": 0.1}),
])
def test_from_config_rejects_unknown_keys(cls, config):
    with pytest.raises(ValueError, match=r"unknown keys \[.*\]. Valid keys"):
        cls.from_config(config)


def expabs_by_autodiff(alpha, scale, source_dtype):
    """ExpAbs as it was written before its fused kernel: the plain formula,
    differentiated by the backend (the reference for the hand-written
    gradient)."""
    end = 20.0
    if source_dtype == "float16":
        end = min(max(math.log(65504.0 / 2 * scale / alpha), 0.0), 20.0)

    def penalty(x):
        x = keras.ops.cast(x, "float32")
        # |x| as x * sign(x): gradient 0 at 0 on every backend.
        u = keras.ops.minimum(x * keras.ops.sign(x) / scale, 1e20)
        exponential = keras.ops.sum(keras.ops.expm1(keras.ops.minimum(u, end)))
        return alpha * (exponential + math.exp(end) * keras.ops.sum(keras.ops.relu(u - end)))

    return penalty


# No weight sits exactly where a `minimum` switches (|w| / scale at 20 or
# 1e20): JAX and PyTorch split the reference's gradient there.
HUGE = [0.0, 1e-8, 0.3, 1.0, 5.5, 11.5, 19.5, 20.5, 88.0, 89.0, 1e4, 65504.0, 1e19, 1e21, 1e30, 3e38]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("alpha,scale", [(0.03, 1.0), (2.0, 0.25)])
def test_expabs_fused_value_and_gradient_equal_the_plain_formula(dtype, alpha, scale):
    finfo_max = float(ml_dtypes.finfo(dtype).max)
    w = np.concatenate([RNG.normal(scale=2.0, size=200), HUGE])
    w = np.concatenate([w, -w]).astype("float32")
    w = w[np.abs(w) <= finfo_max].reshape(-1, 2)
    tensor = keras.ops.cast(w, dtype)
    value, grad = value_and_grad(R.ExpAbs(alpha, scale=scale), tensor)
    ref_value, ref_grad = value_and_grad(expabs_by_autodiff(alpha, scale, dtype), tensor)
    assert np.isfinite(value) and np.all(np.isfinite(grad.astype("float32")))
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    # Below float32: the float32 gradient is rounded to the variable's dtype
    # in both, so they agree up to that rounding.
    rtol = 1e-6 if dtype == "float32" else float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(grad.astype("float32"), ref_grad.astype("float32"), rtol=rtol)


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "traced"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("alpha,scale", [(0.03, 1.0), (2.0, 0.25)])
def test_expabs_in_the_exponential_region_equals_the_plain_formula(dtype, alpha, scale, eager):
    # Every entry below the linear part (nearly every model): the value
    # and gradient, exact zeros and entries just below where
    # the linear part starts included, and a weight of a single row.
    end = 20.0 if dtype != "float16" else min(max(math.log(65504.0 / 2 * scale / alpha), 0.0), 20.0)
    rng = np.random.default_rng(7)  # its own: the module's RNG feeds the tests after it
    w = np.concatenate([rng.normal(scale=2.0 * scale, size=198), [0.0, 0.98 * end * scale]])
    w = np.concatenate([w, -w]).astype("float32")
    for shaped in (w.reshape(-1, 2), w.reshape(1, -1), w):
        tensor = keras.ops.cast(shaped, dtype)
        value, grad = value_and_grad(R.ExpAbs(alpha, scale=scale), tensor, eager=eager)
        ref_value, ref_grad = value_and_grad(expabs_by_autodiff(alpha, scale, dtype), tensor, eager=eager)
        if keras.backend.backend() == "jax" and not eager:  # compiled, as in JAX's train step
            import jax

            value, grad = (np.asarray(a, "float32") for a in jax.jit(jax.value_and_grad(
                R.ExpAbs(alpha, scale=scale)))(keras.ops.convert_to_tensor(tensor)))
        np.testing.assert_allclose(value, ref_value, rtol=1e-6)
        rtol = 1e-6 if dtype == "float32" else float(ml_dtypes.finfo(dtype).eps)
        np.testing.assert_allclose(grad, ref_grad, rtol=rtol)
        assert np.all(grad[np.asarray(shaped) == 0] == 0)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the path of PyTorch on the CPU")
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_expabs_on_pytorchs_cpu_takes_its_own_plain_path_only_in_the_exponential_region(scale):
    import torch

    alpha, end = 0.5, 20.0
    w = np.concatenate([RNG.normal(scale=2.0 * scale, size=(3, 4)), [[0.0, -0.0, 0.9 * end * scale, -1e-9]]])
    x = torch.tensor(w, dtype=torch.float32)
    args = (torch.tensor(alpha), torch.tensor(1.0 / scale), torch.tensor(end))
    value, gradient = penalty_math._exp_abs_plain_on_torch_cpu(x, *args)
    np.testing.assert_allclose(float(value), alpha * np.expm1(np.abs(w) / scale).sum(), rtol=1e-6)
    slope = gradient(torch.tensor(3.0)).numpy()
    np.testing.assert_allclose(slope, 3.0 * alpha / scale * np.sign(w) * np.exp(np.abs(w) / scale), rtol=1e-6)
    assert np.all(slope[w == 0] == 0)  # sign(0): exact zeros stay put
    # Past the exponential region, or NaN: the general code decides.
    for bad in (1.01 * end * scale, np.nan):
        x_bad = x.clone()
        x_bad[0, 0] = bad
        assert penalty_math._exp_abs_plain_on_torch_cpu(x_bad, *args) is None
    empty_value, _ = penalty_math._exp_abs_plain_on_torch_cpu(torch.zeros((0, 3)), *args)
    assert float(empty_value) == 0.0


def test_expabs_penalises_activations_of_an_unknown_batch_size():
    # An activity regularizer sees the batch axis as None once `fit` meets a
    # short last batch (TensorFlow traces the step again with relaxed shapes).
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 4)).astype("float32"), rng.normal(size=(10, 3)).astype("float32")
    models = []
    for activity_regularizer in (None, R.ExpAbs(0.1)):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
            3, kernel_initializer="ones", activity_regularizer=activity_regularizer)])
        model.compile(keras.optimizers.SGD(0.0), "mse")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        models.append(model)
    plain, penalised = (model.evaluate(x, y, batch_size=10, verbose=0) for model in models)
    activations = x @ np.ones((4, 3), "float32")
    # Keras divides an activity penalty by the batch size.
    np.testing.assert_allclose(penalised - plain, 0.1 * np.sum(np.expm1(np.abs(activations))) / 10, rtol=1e-4)


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "traced"])
def test_expabs_slope_is_read_off_each_entrys_term(eager):
    # The general code (JAX, PyTorch past the exponential region, TensorFlow
    # eager) takes the slope from the term itself: min(term, expm1(20)) + 1
    # is exp(|w| / scale) up to the linear part, exp(20) along it, and the
    # saturation's 0 past 1e20. (TensorFlow's traced call runs its fused
    # kernels here: `fuse_every_weight`.)
    reg = R.ExpAbs(0.5, scale=0.5)  # alpha / scale = 1
    w = np.array([[0.0, -9.9], [3.0, -10.5], [1e30, 9.999]], "float32")
    u = 2.0 * np.abs(w).astype("float64")  # of the float32 weights, not of the decimals

    def value_and_grad_as_fit(w):
        if keras.backend.backend() == "jax" and not eager:  # compiled, as in JAX's train step
            import jax

            compiled = jax.jit(jax.value_and_grad(reg))
            return tuple(np.asarray(a, "float32") for a in compiled(keras.ops.convert_to_tensor(w)))
        return value_and_grad(reg, w, eager=eager)

    value, grad = value_and_grad_as_fit(w)
    slope = np.where(u > 1e20, 0.0, np.exp(np.minimum(u, 20.0)))
    np.testing.assert_allclose(grad, np.sign(w) * slope, rtol=1e-6)
    terms = np.where(u <= 20.0, np.expm1(np.minimum(u, 20.0)),
                     math.expm1(20.0) + math.exp(20.0) * (np.minimum(u, 1e20) - 20.0))
    np.testing.assert_allclose(value, 0.5 * terms.sum(), rtol=1e-6)  # the saturated entry's term dominates
    unsaturated = w.copy()
    unsaturated[2, 0] = 0.0
    np.testing.assert_allclose(value_and_grad_as_fit(unsaturated)[0], 0.5 * terms[u <= 1e20].sum(), rtol=1e-6)
    # A NaN weight: a NaN value and gradient, as autodiff gives.
    nan_value, nan_grad = value_and_grad_as_fit(np.array([1.0, np.nan], "float32"))
    assert np.isnan(nan_value) and np.isnan(nan_grad[1])


TENSORFLOW_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's fused kernels (JAX compiles the whole step, PyTorch runs op by op)")


def _kernel_traces():
    kernels = [penalty_math._l1_l2_sums_kernel, penalty_math._l1_l2_gradient_kernel, penalty_math._exp_abs_sums_kernel,
               penalty_math._exp_abs_gradient_kernel, penalty_math._group_norms_kernel, penalty_math._group_lasso_gradient_kernel]
    return sum(k.experimental_get_tracing_count() for k in kernels)


@TENSORFLOW_ONLY
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reg", [R.L1(0.03), R.L2(0.05), R.ElasticNet(0.02, 0.05), R.ExpAbs(0.03),
                                 R.GroupLasso(0.03), R.GroupLasso(0.03, axis=0)], ids=repr)
def test_eager_calls_give_what_the_train_step_gives(dtype, reg):
    # Eager calls (total_penalty, a penalty called by hand) take the plain
    # path and compile nothing; traced ones (the train step) the fused
    # kernels. A shape of its own per case, so the traced call must trace.
    rows = 300 + 7 * ["float32", "float16", "bfloat16"].index(dtype)
    w = RNG.normal(scale=2.0, size=(rows, 40)).astype("float32")
    w[0, :3] = 0.0
    w[:, 5] = 0.0  # a dead group along the last axis
    w[7, :] = 0.0  # and one along the first
    # ExpAbs' linear part (from 20, or ~14 in float16) and its saturation.
    w[1, :4] = [25.0, -30.0, 6e4, -1e25 if dtype != "float16" else -6e4]
    tensor = keras.ops.cast(w, dtype)
    traces = _kernel_traces()
    value, grad = value_and_grad(reg, tensor, eager=True)
    assert _kernel_traces() == traces
    traced_value, traced_grad = value_and_grad(reg, tensor)
    assert _kernel_traces() > traces
    np.testing.assert_allclose(value, traced_value, rtol=1e-6)
    rtol = 1e-6 if dtype == "float32" else float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(grad, traced_grad, rtol=rtol, atol=1e-30)


@TENSORFLOW_ONLY
def test_only_large_weights_use_the_fused_kernels(monkeypatch):
    monkeypatch.setattr(penalty_math, "FUSED_FROM", DEFAULT_FUSED_FROM)
    reg = R.ElasticNet(0.02, 0.05)
    traces = _kernel_traces()
    # Shapes no other test uses (61 columns), so the large one must trace.
    rows = -(-DEFAULT_FUSED_FROM // 61)
    value_and_grad(reg, RNG.normal(size=(rows - 1, 61)).astype("float32"))
    assert _kernel_traces() == traces  # plain ops are faster on a small weight
    large = RNG.normal(size=(rows, 61)).astype("float32")
    value, grad = value_and_grad(reg, large)
    assert _kernel_traces() == traces + 2  # the forward and the backward kernel
    np.testing.assert_allclose(value, 0.02 * np.abs(large).sum() + 0.05 * (large.astype("float64") ** 2).sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(grad, 0.02 * np.sign(large) + 0.1 * large, rtol=1e-6)


@TENSORFLOW_ONLY
def test_expabs_kernel_expm1_matches_float64():
    # The fused kernel's own expm1, compiled as there: a Taylor series below
    # 0.5, exp - 1 above.
    v = np.concatenate([np.linspace(0.0, 1.0, 20001), np.geomspace(1e-30, 20.0, 2001)]).astype("float32")
    exact = np.expm1(v.astype("float64"))
    kernel = penalty_math.one_kernel(penalty_math._expm1_of_nonnegative)
    ours = keras.ops.convert_to_numpy(kernel(keras.ops.convert_to_tensor(v)))
    np.testing.assert_allclose(ours, exact, rtol=3e-7, atol=0)


def test_expabs_fused_path_is_exact_on_a_large_weight_with_a_schedule():
    # Millions of terms: the sum must not drift (XLA on CPU sums in order).
    w = RNG.normal(scale=0.5, size=(1000, 1000)).astype("float32")
    reg = R.ExpAbs(DelayedRamp(0.02, 0, 10), step=5)
    value, grad = value_and_grad(reg, w)
    exact = 0.01 * np.sum(np.expm1(np.abs(w.astype("float64"))))
    np.testing.assert_allclose(value, exact, rtol=1e-6)
    np.testing.assert_allclose(grad, 0.01 * np.sign(w) * np.exp(np.abs(w.astype("float64"))), rtol=1e-6)


def elastic_net_by_autodiff(l1, l2):
    def penalty(x):
        x = keras.ops.cast(x, "float32")
        return l1 * keras.ops.sum(x * keras.ops.sign(x)) + l2 * keras.ops.sum(keras.ops.square(x))

    return penalty


def group_lasso_by_autodiff(alpha, axis):
    def penalty(x):
        x = keras.ops.cast(x, "float32")
        squares = keras.ops.sum(keras.ops.square(x), axis=[i for i in range(2) if i != axis % 2])
        group_size = x.shape[1 - axis % 2]
        return alpha * math.sqrt(group_size) * keras.ops.sum(keras.ops.sqrt(squares))

    return penalty


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reg,reference", [
    (R.L1(0.03), elastic_net_by_autodiff(0.03, 0.0)),
    (R.L2(0.05), elastic_net_by_autodiff(0.0, 0.05)),
    (R.ElasticNet(l1=0.02, l2=0.05), elastic_net_by_autodiff(0.02, 0.05)),
    (R.ElasticNet(l1=DelayedRamp(0.04, 0, 10), l2=0.05, step=5), elastic_net_by_autodiff(0.02, 0.05)),
    (R.GroupLasso(0.03), group_lasso_by_autodiff(0.03, -1)),
    (R.GroupLasso(DelayedRamp(0.06, 0, 10), axis=0, step=5), group_lasso_by_autodiff(0.03, 0)),
], ids=lambda r: repr(r)[:40])
def test_penalties_give_the_float32_penalty_and_its_gradient_in_every_dtype(dtype, reg, reference):
    # Under TensorFlow (traced) the weight is read once in the forward pass
    # and once in the backward pass, each by a fused kernel with its own
    # gradient formula; the reference is the plain formula on the float32
    # cast, differentiated by the backend.
    w = RNG.normal(scale=2.0, size=(300, 40)).astype("float32")
    w[0, :3] = 0.0
    tensor = keras.ops.cast(w, dtype)
    value, grad = value_and_grad(reg, tensor)
    ref_value, ref_grad = value_and_grad(reference, tensor)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    # Both round the float32 gradient once to the weight's dtype.
    rtol = 1e-6 if dtype == "float32" else float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(grad.astype("float32"), ref_grad.astype("float32"), rtol=rtol, atol=1e-30)
    if not isinstance(reg, R.GroupLasso):
        assert np.all(grad[0, :3].astype("float32") == 0.0)  # exact zeros stay put under L1


@pytest.mark.parametrize("reg", [R.L1(0.03), R.L2(0.05), R.ElasticNet(0.02, 0.05), R.ExpAbs(0.03),
                                 R.GroupLasso(0.03)], ids=lambda r: type(r).__name__)
def test_a_loss_scale_multiplies_the_half_precision_gradient_in_float32(reg):
    # LossScaleOptimizer's scale reaches 2**16 and more: rounded to float16
    # first, it would be inf, and so every penalised gradient.
    w = RNG.normal(scale=0.5, size=(30, 8)).astype("float32")
    tensor = keras.ops.cast(w, "float16")
    _, grad = value_and_grad(lambda x: 2.0**16 * reg(x), tensor)
    _, unscaled = value_and_grad(reg, tensor)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad / 2.0**16, unscaled, rtol=float(ml_dtypes.finfo("float16").eps))


def test_expabs_gradient_is_zero_at_exact_zeros_under_a_huge_upstream():
    # alpha / scale = 1e34 times a 2**16 loss scale overflows float32: the
    # upstream must multiply the slope (0 at exact zeros), not the other way.
    w = np.array([[0.0, 0.0], [1.0, -1.0]], "float32")  # past the saturation: 0 too
    _, grad = value_and_grad(lambda x: 2.0**16 * R.ExpAbs(1e4, scale=1e-30)(x), w)
    np.testing.assert_array_equal(grad, np.zeros_like(w))


def test_l1_on_a_huge_bfloat16_weight_is_finite():
    # bfloat16 holds 1e20, whose square overflows float32: L1 must not touch it.
    w = keras.ops.cast(np.array([[1e20, -2.0], [0.5, 0.0]], "float32"), "bfloat16")
    value, grad = value_and_grad(R.L1(0.5), w)
    assert np.isfinite(value) and value == pytest.approx(0.5 * (float(np.abs(keras.ops.convert_to_numpy(
        keras.ops.cast(w, "float32"))).sum())), rel=1e-6)
    np.testing.assert_array_equal(grad, [[0.5, -0.5], [0.5, 0.0]])


def test_half_precision_group_lasso_gradient_is_zero_in_dead_groups():
    w = RNG.normal(size=(6, 4)).astype("float32")
    w[:, 1] = 0.0
    value, grad = value_and_grad(R.GroupLasso(0.1), keras.ops.cast(w, "float16"))
    assert np.isfinite(value) and np.all(np.isfinite(grad.astype("float32")))
    assert np.all(grad[:, 1] == 0) and np.all(grad[:, 0] != 0)


@pytest.mark.parametrize("cls", [R.L1, R.L2, R.ExpAbs, R.GroupLasso])
def test_a_schedule_that_goes_negative_switches_the_penalty_off(cls):
    # 0.1 at step 0, 0 at step 50, -0.1 at step 100: clipped at 0 from 50 on.
    reg = cls(keras.optimizers.schedules.PolynomialDecay(0.1, 100, -0.1), step=80)
    value, grad = value_and_grad(reg, W)
    assert reg.current_strengths() == {"alpha": 0.0}
    assert float(value) == 0.0 and not np.any(grad)
    reg.set_step(20)
    assert reg.current_strengths()["alpha"] == pytest.approx(0.06)
    assert float(value_and_grad(reg, W)[0]) > 0


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def unregistered_fn(x):
    return 0.0 * keras.ops.sum(x)


@keras.saving.register_keras_serializable(package="test_regularizers")
def registered_fn(x):
    return 0.0 * keras.ops.sum(x)


BAD_INPUT = [
    # Combined: every part must survive save and reload.
    row("combined-lambda", lambda m: R.Combined([R.L1(0.1), lambda x: 0.0 * keras.ops.sum(x)]), TypeError, "regularizers"),
    row("combined-unregistered-fn", lambda m: R.Combined([R.L1(0.1), unregistered_fn]), TypeError, "item 1"),
    row("combined-config-missing-key", lambda m: R.Combined.from_config({}), ValueError, "regularizers"),
    row("combined-empty", lambda m: R.Combined([]), TypeError, "regularizers"),
    row("combined-not-list", lambda m: R.Combined(R.L1(0.1)), TypeError, "regularizers"),
    row("combined-not-callable", lambda m: R.Combined([R.L1(0.1), 0.5]), TypeError, "regularizers"),
    # Strengths and schedules.
    row("l1-negative", lambda m: R.L1(-0.1), ValueError, "alpha"),
    row("l1-nan", lambda m: R.L1(float("nan")), ValueError, "alpha"),
    row("l1-str", lambda m: R.L1("0.1"), TypeError, "alpha"),
    row("l1-bool", lambda m: R.L1(True), TypeError, "alpha"),
    row("l1-step-negative", lambda m: R.L1(SERIALIZABLE_SCHEDULE, step=-1), ValueError, "step"),
    row("l1-step-float", lambda m: R.L1(SERIALIZABLE_SCHEDULE, step=1.5), TypeError, "step"),
    row("elasticnet-l2-negative", lambda m: R.ElasticNet(0.1, -1.0), ValueError, "l2"),
    row("expabs-scale-zero", lambda m: R.ExpAbs(0.1, scale=0.0), ValueError, "scale"),
    row("expabs-scale-tiny", lambda m: R.ExpAbs(0.1, scale=1e-39), ValueError, "scale"),  # was a NaN penalty
    row("expabs-scale-huge", lambda m: R.ExpAbs(0.1, scale=1e300), ValueError, "scale"),  # was no penalty
    row("expabs-scale-str", lambda m: R.ExpAbs(0.1, scale="1"), TypeError, "scale"),
    row("grouplasso-axis-float", lambda m: R.GroupLasso(0.1, axis=1.0), TypeError, "axis"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


def right_negative_schedule_switches_the_penalty_off():
    # PolynomialDecay(0.1, 100, -0.1) crosses 0 at step 50: clipped there, never a reward.
    schedule = keras.optimizers.schedules.PolynomialDecay(0.1, 100, -0.1)
    ones = keras.ops.ones((2, 2))
    assert float(R.L1(schedule, step=25)(ones)) == pytest.approx(0.2)
    for step in (50, 75, 100, 1000):
        regularizer = R.L1(schedule, step=step)
        assert regularizer.current_strengths() == {"alpha": 0.0}
        assert float(regularizer(ones)) == 0.0


def right_combined_of_serializable_parts_round_trips():
    combined = R.Combined([R.L1(SERIALIZABLE_SCHEDULE), keras.regularizers.L2(0.1), registered_fn])
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(combined))
    w = keras.ops.ones((2, 2))
    assert float(again(w)) == pytest.approx(float(combined(w)))


RIGHT = right_checks(
    right_negative_schedule_switches_the_penalty_off,
    right_combined_of_serializable_parts_round_trips,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
