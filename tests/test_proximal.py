"""Proximal penalties: the step against NumPy references, exact zeros after
`fit`, schedules, saving, composition with held zeros, bad input."""

import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit import _optimizer_slots as optimizer_slots
from keras_regkit import proximal
from keras_regkit import regularizers as R

from conftest import assert_refused_and_unchanged, unbuilt, assert_round_trip, right_checks, row, run_with_fixtures

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)
# Entries well inside and well outside every threshold used below, so that
# which become zero does not hang on rounding.
W0 = np.array([[0.8, -0.002, 0.3], [-0.5, 0.004, -0.0015], [0.0, 1.2, -0.9]], "float32")
# One small row and one small column, for group lasso along either axis.
W_GROUPS = np.array([[0.8, 0.5, 0.03], [0.05, -0.04, 0.02], [-0.6, 1.2, -0.01]], "float32")
G = np.array([[0.1, 0.001, -0.2], [0.3, -0.001, 0.002], [0.0, -0.4, 0.05]], "float32")


def single_kernel_model(regularizer, kernel=W0):
    layer = keras.layers.Dense(kernel.shape[1], use_bias=False, kernel_regularizer=regularizer)
    model = keras.Sequential([keras.Input((kernel.shape[0],)), layer])
    layer.kernel.assign(kernel)
    return model, layer.kernel


def one_step(regularizer, optimizer, kernel=W0, gradient=G, prepare=None):
    """The kernel after one `optimizer.apply` with a bound proximal penalty,
    and the kernel after the same step without it."""
    plain = keras.Variable(kernel, name="plain")
    twin = optimizer.from_config(optimizer.get_config())
    model, variable = single_kernel_model(regularizer, kernel)
    assert rk.bind_proximal(model, optimizer) == 1
    optimizer.build([variable])
    twin.build([plain])
    if prepare is not None:
        prepare(optimizer, variable)
        prepare(twin, plain)
    optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    twin.apply([keras.ops.convert_to_tensor(gradient)], [plain])
    return keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(plain)


def soft_threshold(w, threshold):
    return np.sign(w) * np.maximum(np.abs(w) - threshold, np.float32(0))


def test_one_sgd_step_soft_thresholds_exactly_as_numpy():
    lr, alpha = 0.1, 0.05  # threshold 0.005
    after, plain = one_step(R.L1(alpha, proximal=True), keras.optimizers.SGD(lr, momentum=0.9))
    expected = soft_threshold(plain, np.float32(lr) * np.float32(alpha))
    np.testing.assert_array_equal(after, expected)
    assert (after == 0).sum() == 4 and (plain == 0).sum() == 1


def test_elastic_net_thresholds_its_l1_part_and_keeps_l2_in_the_loss():
    lr = 0.1
    regularizer = R.ElasticNet(l1=0.02, l2=0.5, proximal=True)
    np.testing.assert_allclose(float(regularizer(W0)), 0.5 * np.square(W0).sum(), rtol=1e-6)
    after, plain = one_step(regularizer, keras.optimizers.SGD(lr))
    np.testing.assert_array_equal(after, soft_threshold(plain, np.float32(lr) * np.float32(0.02)))


@pytest.mark.parametrize("axis", [0, -1])
def test_one_sgd_step_of_group_lasso_shrinks_each_group_norm_as_numpy(axis):
    lr, alpha = 0.5, 0.2
    after, plain = one_step(R.GroupLasso(alpha, axis=axis, proximal=True), keras.optimizers.SGD(lr), W_GROUPS)
    groups = np.moveaxis(plain.astype("float64"), axis, 0)  # one row per group
    norms = np.linalg.norm(groups, axis=1, keepdims=True)
    threshold = lr * alpha * np.sqrt(groups.shape[1])
    expected = np.moveaxis(groups * np.maximum(1 - threshold / np.where(norms > 0, norms, 1), 0), 0, axis)
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7)
    dead = np.all(np.moveaxis(after, axis, 0) == 0, axis=1)
    assert dead.tolist() == (norms[:, 0] <= threshold).tolist() and dead.any() and not dead.all()


def _known_moments(slots):
    """Sets each named slot to a known positive array and the step count to 4."""

    def prepare(optimizer, variable):
        optimizer.iterations.assign(4)
        for name, value in slots.items():
            optimizer_slots.slot(optimizer, variable, name).assign(value)

    return prepare


M = RNG.normal(scale=0.1, size=W0.shape).astype("float32")
V = RNG.uniform(1e-4, 4e-2, size=W0.shape).astype("float32")


@pytest.mark.parametrize("amsgrad", [False, True])
def test_one_adam_step_with_known_moments_matches_the_numpy_proxgen_step(amsgrad):
    lr, alpha, b1, b2, eps = 0.01, 0.5, 0.9, 0.999, 1e-7
    optimizer = keras.optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps, amsgrad=amsgrad)
    slots = {"momentum": M, "velocity": V} | ({"velocity_hat": 2 * V} if amsgrad else {})
    after, plain = one_step(R.L1(alpha, proximal=True), optimizer, prepare=_known_moments(slots))
    # NumPy reference, in float64: Keras' Adam step at t = 5, then the
    # soft-threshold by alpha times its per-entry step (ProxGen).
    w, g, t = W0.astype("float64"), G.astype("float64"), 5
    m = M + (g - M) * (1 - b1)
    v = V + (g * g - V) * (1 - b2)
    if amsgrad:
        v = np.maximum(2 * V, v)
    step = lr * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
    w_adam = w - m / (1 - b1**t) * step
    np.testing.assert_allclose(plain, w_adam, rtol=1e-5, atol=1e-7)
    expected = soft_threshold(w_adam, alpha * step)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(after == 0, expected == 0)
    assert (after == 0).sum() >= 2


@pytest.mark.parametrize("name", ["rmsprop", "rmsprop_centered", "adagrad"])
def test_one_step_of_rmsprop_and_adagrad_divides_the_threshold_as_they_divide_the_step(name):
    lr, alpha, eps, rho = 0.01, 0.05, 1e-7, 0.9
    w, g = W0.astype("float64"), G.astype("float64")
    if name == "adagrad":
        optimizer = keras.optimizers.Adagrad(lr, epsilon=eps)
        slots = {"accumulator": V}
        denominator = V + g * g + eps
    else:
        centered = name == "rmsprop_centered"
        optimizer = keras.optimizers.RMSprop(lr, rho=rho, epsilon=eps, centered=centered)
        slots = {"velocity": V} | ({"average_gradient": M / 10} if centered else {})
        v = rho * V + (1 - rho) * g * g
        denominator = v + eps - (np.square(rho * M / 10 + (1 - rho) * g) if centered else 0)
    after, plain = one_step(R.L1(alpha, proximal=True), optimizer, prepare=_known_moments(slots))
    step = lr / np.sqrt(denominator)
    np.testing.assert_allclose(plain, w - g * step, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after, soft_threshold(w - g * step, alpha * step), rtol=1e-5, atol=1e-7)


def test_a_scheduled_strength_sets_the_threshold_of_each_step():
    # Strength 0 at step 0, 0.05 from step 1, bound to the optimizer's count.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.0, 0.05])
    regularizer = R.L1(schedule, proximal=True)
    lr = 0.1
    optimizer, twin = keras.optimizers.SGD(lr), keras.optimizers.SGD(lr)
    model, variable = single_kernel_model(regularizer)
    plain = keras.Variable(W0)
    rk.bind_proximal(model, optimizer)
    optimizer.build([variable])
    regularizer.bind_step(optimizer.iterations)
    gradient = keras.ops.convert_to_tensor(G)
    optimizer.apply([gradient], [variable])
    twin.apply([gradient], [plain])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(plain))
    plain.assign(variable)
    optimizer.apply([gradient], [variable])
    twin.apply([gradient], [plain])
    expected = soft_threshold(keras.ops.convert_to_numpy(plain), np.float32(lr) * np.float32(0.05))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), expected)


def _data(n=256, features=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype("int32")
    return x, y


def _classifier(regularizer, features=12):
    return keras.Sequential([
        keras.Input((features,)),
        keras.layers.Dense(32, activation="relu", kernel_regularizer=regularizer, name="hidden"),
        keras.layers.Dense(2, kernel_regularizer=regularizer, name="out"),
    ])


def _fit(model, optimizer, callbacks, epochs=8):
    x, y = _data()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_leaves_many_exact_zeros_where_the_gradient_term_leaves_none(optimizer):
    alpha = 0.03 if optimizer == "sgd" else 0.01

    def kernels(proximal):
        keras.utils.set_random_seed(1)
        model = _classifier(R.L1(alpha, proximal=proximal))
        lr = 0.1 if optimizer == "sgd" else 0.01
        opt = keras.optimizers.SGD(lr) if optimizer == "sgd" else keras.optimizers.Adam(lr)
        history = _fit(model, opt, [rk.callbacks.ProximalUpdate()] if proximal else [])
        return [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers], history

    gradient_term, _ = kernels(False)
    prox, history = kernels(True)
    zeros = sum((k == 0).sum() for k in prox) / sum(k.size for k in prox)
    assert sum((k == 0).sum() for k in gradient_term) == 0
    assert zeros > 0.3, zeros
    assert history.history["accuracy"][-1] > 0.85
    # The proximal penalty adds nothing to the loss.
    unbound = _classifier(R.L1(alpha, proximal=True))
    with pytest.warns(UserWarning, match="not bound"):
        assert [float(loss) for loss in unbound.losses] == [0.0, 0.0]


def test_group_lasso_over_inputs_drops_planted_noise_features_and_the_report_names_them():
    # Inputs 0-2 carry the label, 3-11 are noise. Under a LossScaleOptimizer
    # (mixed precision's), whose inner Adam keeps the moments.
    keras.utils.set_random_seed(1)
    model = _classifier(R.GroupLasso(0.02, axis=0, proximal=True))
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    _fit(model, optimizer, [rk.callbacks.ProximalUpdate()])
    (name, (dropped, features)), = rk.sparsity_report(model).dropped_inputs.items()
    assert features == 12 and not set(dropped) & {0, 1, 2} and len(dropped) >= 5, dropped
    hidden = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    assert (hidden[dropped] == 0).all()


def test_epoch_schedules_move_the_threshold_on_every_backend():
    # Strength 0 in epoch 0, then strong: no zeros after epoch 0, many after.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.0, 0.1])
    keras.utils.set_random_seed(1)
    model = _classifier(R.L1(schedule, proximal=True))
    zeros = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: zeros.append(
        int((keras.ops.convert_to_numpy(model.get_layer("hidden").kernel) == 0).sum())))
    _fit(model, keras.optimizers.SGD(0.1), [rk.callbacks.RegularizationScheduler(update_freq="epoch"),
                                           rk.callbacks.ProximalUpdate(), record], epochs=2)
    assert zeros[0] == 0 and zeros[1] > 30, zeros


@pytest.mark.parametrize("regularizer", [
    R.L1(1e-3, proximal=True),
    R.ElasticNet(1e-3, 1e-4, proximal=True),
    R.GroupLasso(1e-3, axis=0, proximal=True),
    R.L1(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5), proximal=True),
], ids=repr)
def test_config_round_trips_with_proximal(regularizer):
    restored = assert_round_trip(regularizer)
    assert restored.proximal is True
    assert regularizer.get_config()["proximal"] is True
    assert "proximal=True" in repr(regularizer)


def test_a_config_without_proximal_loads_as_a_gradient_term():
    assert R.L1.from_config({"alpha": 0.1}).proximal is False


def test_saved_model_reloads_proximal_and_keeps_thresholding(tmp_path):
    keras.utils.set_random_seed(1)
    model = _classifier(R.L1(0.05, proximal=True))
    _fit(model, keras.optimizers.SGD(0.1), [rk.callbacks.ProximalUpdate()], epochs=2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_layer("hidden").kernel.regularizer.proximal is True
    before = keras.ops.convert_to_numpy(reloaded.get_layer("hidden").kernel)
    np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(model.get_layer("hidden").kernel))
    _fit(reloaded, keras.optimizers.SGD(0.1), [rk.callbacks.ProximalUpdate()], epochs=3)
    after = keras.ops.convert_to_numpy(reloaded.get_layer("hidden").kernel)
    assert (after == 0).sum() > (before == 0).sum() > 0


def test_composes_with_held_zeros_in_either_order():
    for bind_first in (True, False):
        keras.utils.set_random_seed(1)
        model = _classifier(R.L1(0.2, proximal=True))
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if bind_first:
            rk.bind_proximal(model)
        rk.prune(model, sparsity=0.5, hold=True)
        held = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel) == 0
        x, y = _data()
        model.fit(x, y, epochs=3, verbose=0, callbacks=[rk.callbacks.ProximalUpdate()])
        kernel = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
        assert (kernel[held] == 0).all()
        assert (kernel == 0).sum() > held.sum()  # the proximal step adds zeros of its own
        assert rk.release_zeros(model) == 2
        variable = model.get_layer("hidden").kernel
        assert isinstance(variable.constraint, proximal.ProximalConstraint) and variable.constraint.inner is None


def test_rebinding_is_idempotent_and_removing_the_penalty_removes_the_step():
    model = _classifier(R.L1(1e-3, proximal=True))
    model.compile("sgd", "mse")
    assert rk.bind_proximal(model) == rk.bind_proximal(model) == 2
    kernel = model.get_layer("hidden").kernel
    assert isinstance(kernel.constraint, proximal.ProximalConstraint) and kernel.constraint.inner is None
    rk.remove_regularizers(model, "hidden")
    assert rk.bind_proximal(model) == 1
    assert kernel.constraint is None


def test_an_unbound_proximal_penalty_warns_that_it_does_nothing():
    keras.utils.set_random_seed(1)
    model = _classifier(R.L1(3e-3, proximal=True))
    with pytest.warns(UserWarning, match=r"proximal=True\) is not bound to an optimizer.*ProximalUpdate\(\)"):
        _fit(model, keras.optimizers.SGD(0.1), [], epochs=1)
    assert (keras.ops.convert_to_numpy(model.get_layer("hidden").kernel) == 0).sum() == 0


def test_the_callback_does_not_warn_when_bound_and_warns_when_there_is_nothing_to_do():
    keras.utils.set_random_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(_classifier(R.L1(3e-3, proximal=True)), "sgd", [rk.callbacks.ProximalUpdate()], epochs=1)
    with pytest.warns(UserWarning, match="ProximalUpdate has nothing to do"):
        _fit(_classifier(R.L1(3e-3)), "sgd", [rk.callbacks.ProximalUpdate()], epochs=1)
    assert_round_trip(rk.callbacks.ProximalUpdate())


def test_penalties_without_a_proximal_step_refuse_one():
    # The other bad input (proximal="yes", an unsupported optimizer, ...) is
    # in BAD_INPUT below, with the model checked unchanged.
    with pytest.raises(TypeError, match="unexpected keyword argument 'proximal'"):
        R.L2(0.1, proximal=True)
    with pytest.raises(ValueError, match="L2 has no proximal step"):
        R.L2(0.1).proximal_step(keras.ops.ones((2,)), 0.1)
    message = str(pytest.raises(ValueError, rk.bind_proximal, _classifier(R.L1(0.1, proximal=True)),
                                keras.optimizers.Nadam()).value)
    assert "SGD, Adam, RMSprop, Adagrad and AdamW" in message and "proximal=False" in message


def test_the_optimizer_slots_read_are_where_this_keras_names_them():
    # If a Keras release renames the slots, the proximal step cannot follow
    # the optimizer: fail here, loudly.
    variable = keras.Variable(np.ones((2, 3), "float32"), name="kernel")
    for optimizer, names in [
        (keras.optimizers.Adam(amsgrad=True), ["momentum", "velocity", "velocity_hat"]),
        (keras.optimizers.RMSprop(centered=True), ["velocity", "average_gradient"]),
        (keras.optimizers.Adagrad(), ["accumulator"]),
    ]:
        optimizer.build([variable])
        for name in names:
            assert optimizer_slots.slot(optimizer, variable, name) is not None, (optimizer, name)
    with pytest.raises(RuntimeError, match="keeps no `velocity` slot"):
        proximal.step_size(keras.optimizers.Adam(), variable)


def test_search_strength_binds_a_proximal_penalty_so_its_zeros_rise_with_the_strength(tmp_path):
    pytest.importorskip("keras_tuner")
    x, y = _data()

    def build_model():
        model = _classifier(None)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    result = rk.search_strength(build_model, x, y, validation_data=(x, y),
                                penalty=lambda s: R.L1(s, proximal=True), low=1e-3, high=1e-1, fine=1,
                                epochs=3, patience=None, directory=str(tmp_path))
    zeros = {row["strength"]: row["zeros"] for row in result.rows}
    assert zeros[0.0] == 0 and 0 < zeros[1e-2] < zeros[1e-1], zeros


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused kernel is TensorFlow's")
@pytest.mark.parametrize("regularizer", [R.L1(2.0, proximal=True), R.GroupLasso(10.0, axis=0, proximal=True)],
                         ids=repr)
def test_the_fused_tensorflow_step_matches_the_plain_one(regularizer, monkeypatch):
    import tensorflow as tf

    from keras_regkit import _penalty_math as penalty_math

    def traced_step(fused_from):
        monkeypatch.setattr(penalty_math, "FUSED_FROM", fused_from)
        optimizer = keras.optimizers.Adam(0.01)
        model, variable = single_kernel_model(regularizer, W_GROUPS)
        rk.bind_proximal(model, optimizer)
        optimizer.build([variable])
        _known_moments({"momentum": M, "velocity": V})(optimizer, variable)
        tf.function(lambda: optimizer.apply([tf.constant(G)], [variable]))()
        return keras.ops.convert_to_numpy(variable)

    fused, plain = traced_step(0), traced_step(10**9)
    np.testing.assert_allclose(fused, plain, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(fused == 0, plain == 0)
    assert (fused == 0).any()


# -- the optimizer the step follows ---------------------------------------------


def _bound_after_one_epoch(lr=0.5):
    """A classifier with a proximal L1, trained one epoch with `SGD(lr)` and
    `ProximalUpdate` (so bound to that optimizer), and its data."""
    keras.utils.set_random_seed(1)
    model = _classifier(R.L1(0.01, proximal=True))
    _fit(model, keras.optimizers.SGD(lr), [rk.callbacks.ProximalUpdate()], epochs=1)
    return model, _data()


def _kernels(model):
    return [keras.ops.convert_to_numpy(layer.kernel).copy() for layer in model.layers]


def _apply_zero_gradient(optimizer, variable):
    """One step of `optimizer` that moves nothing but the proximal step."""
    optimizer.apply([keras.ops.zeros(variable.shape)], [variable])
    return keras.ops.convert_to_numpy(variable)


def right_a_model_compiled_again_is_stepped_at_its_new_rate():
    # Once bound to SGD(0.5), then compiled with SGD(0.0) and fit without
    # ProximalUpdate: nothing may move, the threshold included.
    model, (x, y) = _bound_after_one_epoch()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.0), loss)
    before = _kernels(model)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for kernel, previous in zip(_kernels(model), before):
        np.testing.assert_array_equal(kernel, previous)
    model.compile(keras.optimizers.SGD(0.5), loss)  # and a rate again: zeros again
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert sum((k == 0).sum() for k in _kernels(model)) > sum((k == 0).sum() for k in before)


def right_a_loop_applying_another_optimizer_is_followed():
    lr, alpha = 0.1, 0.05
    model, variable = single_kernel_model(R.L1(alpha, proximal=True))
    rk.bind_proximal(model, keras.optimizers.SGD(0.5))  # bound to 0.5, stepped at 0.1
    after = _apply_zero_gradient(keras.optimizers.SGD(lr), variable)
    np.testing.assert_array_equal(after, soft_threshold(W0, np.float32(lr) * np.float32(alpha)))


def right_a_learning_rate_schedule_is_followed():
    # Rate 0 at the first step, 0.5 from the second: no threshold, then one.
    alpha = 0.01
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.0, 0.5])
    optimizer = keras.optimizers.SGD(schedule)
    model, variable = single_kernel_model(R.L1(alpha, proximal=True))
    rk.bind_proximal(model, optimizer)
    np.testing.assert_array_equal(_apply_zero_gradient(optimizer, variable), W0)
    np.testing.assert_array_equal(_apply_zero_gradient(optimizer, variable),
                                  soft_threshold(W0, np.float32(0.5) * np.float32(alpha)))


RIGHT = right_checks(
    right_a_model_compiled_again_is_stepped_at_its_new_rate,
    right_a_loop_applying_another_optimizer_is_followed,
    right_a_learning_rate_schedule_is_followed,
)


@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)


def test_a_model_compiled_again_with_an_unknown_optimizer_is_refused_before_its_first_step():
    model, (x, y) = _bound_after_one_epoch()
    model.compile(keras.optimizers.Lion(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = _kernels(model)
    with pytest.raises(ValueError, match=r"hidden/kernel': it was bound to SGD, and the model is now compiled "
                                         r"with Lion: .*Received: optimizer=Lion"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for kernel, previous in zip(_kernels(model), before):  # under JAX too, whose step drops them when it raises
        np.testing.assert_array_equal(kernel, previous)
    assert int(model.optimizer.iterations) == 0


def test_a_loop_applying_an_unknown_optimizer_is_refused():
    model, variable = single_kernel_model(R.L1(0.05, proximal=True))
    rk.bind_proximal(model, keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="it was bound to SGD, and Lion now takes its step"):
        keras.optimizers.Lion().apply([keras.ops.zeros(variable.shape)], [variable])


# -- bad input: refused at the call, before any constraint is set -----------

BAD_INPUT = [
    row("l1-proximal-str", lambda m: R.L1(0.1, proximal="yes"), TypeError, "proximal"),
    row("grouplasso-proximal-none", lambda m: R.GroupLasso(0.1, proximal=None), TypeError, "proximal"),
    row("bind-proximal-uncompiled", lambda m: rk.bind_proximal(m), ValueError, "optimizer=None",
        prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-nadam", lambda m: rk.bind_proximal(m, keras.optimizers.Nadam()), ValueError,
        "optimizer=Nadam", prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-accumulation",
        lambda m: rk.bind_proximal(m, keras.optimizers.SGD(gradient_accumulation_steps=2)), ValueError,
        "gradient_accumulation_steps=2",
        prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    # The second layer's axis is wrong: the first gets no constraint either.
    row("bind-proximal-grouplasso-axis", lambda m: rk.bind_proximal(m, keras.optimizers.SGD()), ValueError,
        "axis=5", prepare=lambda m: rk.apply_regularizers(m, {"hidden0": R.L1(0.1, proximal=True),
                                                             "out": R.GroupLasso(0.1, axis=5, proximal=True)})),
    # Its moving average replaces the weights, exact zeros and all, at the end of fit.
    row("bind-proximal-ema", lambda m: rk.bind_proximal(m, keras.optimizers.SGD(use_ema=True)), ValueError,
        "use_ema=True", prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-optimizer-str", lambda m: rk.bind_proximal(m, "sgd"), ValueError, "optimizer='sgd'",
        prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-optimizer-class", lambda m: rk.bind_proximal(m, keras.optimizers.SGD), ValueError,
        "optimizer=<class", prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-loss-scaled-lion",
        lambda m: rk.bind_proximal(m, keras.optimizers.LossScaleOptimizer(keras.optimizers.Lion())), ValueError,
        "optimizer=Lion", prepare=lambda m: rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)})),
    row("bind-proximal-compiled-lion", lambda m: rk.bind_proximal(m), ValueError, "optimizer=Lion",
        prepare=lambda m: (rk.apply_regularizers(m, {"out": R.L1(0.1, proximal=True)}),
                           m.compile(keras.optimizers.Lion(), "mse"))),
    row("bind-proximal-model-str", lambda m: rk.bind_proximal("model", keras.optimizers.SGD()), TypeError,
        "model='model'"),
    row("bind-proximal-unbuilt", lambda m: rk.bind_proximal(unbuilt(), keras.optimizers.SGD()), ValueError,
        "not built"),
    row("proximal-update-config-key", lambda m: rk.callbacks.ProximalUpdate.from_config({"optimizer": "sgd"}),
        ValueError, "unknown keys ['optimizer']"),
]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="JAX and PyTorch build the model before the callbacks run")
def test_proximal_update_refuses_a_model_that_fit_builds_inside_its_first_step():
    # Under TensorFlow, fit builds a model without an Input inside its first
    # step, traced before any weight has its proximal step: epoch 0 would run without it.
    model = keras.Sequential([keras.layers.Dense(2, kernel_regularizer=R.L1(0.1, proximal=True))])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="is not built yet"):
        model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0, callbacks=[rk.callbacks.ProximalUpdate()])
    assert not model.built and int(model.optimizer.iterations) == 0


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
