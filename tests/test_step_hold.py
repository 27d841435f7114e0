"""Zeros held after each call of the train function Keras traced
(`pruning.hold.StepHold`), the shrink's hold where it equals a constraint's:
the rule that picks it, that it holds, that it follows a rebuilt function,
gives the train function back, and that a shrink held this way ends with the
same weights, bit for bit, as one held by constraints."""

import hashlib

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import hold as hold_lib

BACKEND = keras.backend.backend()


def trained(steps_per_execution=1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return model, x, y


def kernels(model):
    return [v for v in model.trainable_variables if len(v.shape) == 2]


def zero_half(model) -> list:
    """Zeros every other entry of each kernel; returns the 0/1 masks."""
    masks = []
    for variable in kernels(model):
        value = keras.ops.convert_to_numpy(variable).copy()
        mask = np.indices(value.shape).sum(axis=0) % 2 == 0
        value[~mask] = 0.0
        variable.assign(value)
        masks.append(mask)
    return masks


STEPS = 100


def as_if_compiled(model):
    """Under PyTorch, a model whose step `torch.compile` traces (the rule
    reads the flag; nothing here runs the step)."""
    if BACKEND == "torch":
        model.jit_compile = True
    return model


@pytest.mark.skipif(BACKEND != "torch", reason="the rule of PyTorch's eager step")
def test_pytorch_holds_by_constraints_unless_its_step_is_compiled():
    model, _, _ = trained()
    assert "eagerly" in hold_lib.step_hold_refused(model, kernels(model), STEPS)
    assert hold_lib.step_hold_refused(as_if_compiled(model), kernels(model), STEPS) is None


def test_a_step_traced_again_anyway_is_held_by_constraints():
    model, _, _ = trained()
    as_if_compiled(model)
    assert "traced again anyway" in hold_lib.step_hold_refused(model, kernels(model), STEPS, traced_anyway=True)


def test_a_weight_listed_twice_is_held_once_and_counted_once():
    model, x, y = trained()
    as_if_compiled(model)
    doubled = kernels(model) + kernels(model)
    entries = 16 * 32 + 32 * 4
    most = int(hold_lib.STEP_HOLD_BUDGET // entries)
    assert hold_lib.step_hold_refused(model, doubled, most) is None
    hold = hold_lib.for_fit(model, doubled, most)
    assert len(hold.variables) == 2
    masks = zero_half(model)
    hold.update()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # under JAX: no buffer donated twice
    for variable, mask in zip(kernels(model), masks):
        assert np.all(keras.ops.convert_to_numpy(variable)[~mask] == 0)
    hold.release()


def test_a_hold_left_by_a_shrink_that_failed_is_unwrapped_by_the_next_and_by_release_zeros():
    model, x, y = trained()
    as_if_compiled(model)
    traced = model.train_function
    left = hold_lib.StepHold(model, kernels(model))
    left.update()
    left.keep_in_step()
    hold_lib.for_fit(model, kernels(model), STEPS)  # the next shrink's
    assert model.train_function is traced
    left = hold_lib.StepHold(model, kernels(model))
    left.update()
    assert rk.release_zeros(model) == 2 and model.train_function is traced


def test_the_step_hold_is_taken_unless_a_weight_has_a_constraint():
    model, _, _ = trained()
    as_if_compiled(model)
    assert hold_lib.step_hold_refused(model, kernels(model), STEPS) is None
    assert isinstance(hold_lib.for_fit(model, kernels(model), STEPS), hold_lib.StepHold)

    constrained = kernels(model)[0]
    constrained.constraint = keras.constraints.NonNeg()
    assert "constraint" in hold_lib.step_hold_refused(model, kernels(model), STEPS)
    # Only the weights held count.
    assert hold_lib.step_hold_refused(model, kernels(model)[1:], STEPS) is None


def test_the_step_hold_is_taken_while_its_multiplies_over_the_budget_cost_less_than_a_trace():
    model, _, _ = trained()
    as_if_compiled(model)
    entries = 16 * 32 + 32 * 4
    most = int(hold_lib.STEP_HOLD_BUDGET // entries)
    assert hold_lib.step_hold_refused(model, kernels(model), most) is None
    assert f"{most + 1} steps over {entries} held entries" in hold_lib.step_hold_refused(model, kernels(model), most + 1)
    assert isinstance(hold_lib.for_fit(model, kernels(model), most + 1), hold_lib.ConstraintHold)
    # Not known (a first epoch of unknown length): a shrink that may be long.
    assert "unknown number of steps" in hold_lib.step_hold_refused(model, kernels(model), None)
    # A weight no step updates costs nothing to hold.
    model.layers[0].trainable = False
    assert hold_lib.step_hold_refused(model, kernels(model) + [model.layers[0].kernel], most * 2) is None


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch's trainer runs one step a call (`steps_per_execution=1`)")
def test_the_step_hold_is_refused_where_a_call_runs_several_steps():
    model, _, _ = trained(steps_per_execution=2)
    assert "steps_per_execution" in hold_lib.step_hold_refused(model, kernels(model), STEPS)
    assert isinstance(hold_lib.for_fit(model, kernels(model), STEPS), hold_lib.ConstraintHold)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a tf.distribute strategy is TensorFlow's")
def test_the_step_hold_is_refused_under_a_distribution_strategy():
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model, _, _ = trained()
    assert "several devices" in hold_lib.step_hold_refused(model, kernels(model), STEPS)


@pytest.mark.skipif(BACKEND != "jax", reason="Keras' distribution API runs under JAX")
def test_the_step_hold_is_refused_under_keras_distribution():
    import jax

    model, _, _ = trained()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        assert "several devices" in hold_lib.step_hold_refused(model, kernels(model), STEPS)
    finally:
        keras.distribution.set_distribution(None)


def test_zeros_stay_zero_through_fit_and_the_traced_train_function_is_given_back():
    model, x, y = trained()
    traced = model.train_function
    masks = zero_half(model)
    before = [keras.ops.convert_to_numpy(v) for v in kernels(model)]
    hold = hold_lib.StepHold(model, kernels(model))
    hold.update()
    assert model.train_function is not traced
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    for variable, mask, start in zip(kernels(model), masks, before):
        value = keras.ops.convert_to_numpy(variable)
        assert np.all(value[~mask] == 0)
        assert np.mean(value[mask] != start[mask]) > 0.9  # the rest trained
    hold.release()
    assert model.train_function is traced and hold_lib.held_masks(model) == []


def test_without_the_hold_the_same_fit_moves_the_zeros():
    """What the test above would see if the hold did nothing."""
    model, x, y = trained()
    masks = zero_half(model)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert any(np.any(keras.ops.convert_to_numpy(v)[~m] != 0) for v, m in zip(kernels(model), masks))


class Rebuild(keras.callbacks.Callback):
    """Makes Keras build a new train function after every step."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.make_train_function(force=True)


def test_a_train_function_rebuilt_mid_fit_is_held_again_from_the_next_step():
    model, x, y = trained()
    traced = model.train_function
    masks = zero_half(model)
    hold = hold_lib.StepHold(model, kernels(model))
    hold.update()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[Rebuild(), hold.callback()])
    for variable, mask in zip(kernels(model), masks):
        assert np.all(keras.ops.convert_to_numpy(variable)[~mask] == 0)
    hold.release()
    # The newest function Keras made, not the first.
    assert model.train_function not in (traced, None) and hold_lib.held_masks(model) == []


def test_a_new_mask_holds_the_new_zeros_without_a_new_function():
    model, x, y = trained()
    hold = hold_lib.StepHold(model, kernels(model))
    hold.update()  # no zeros yet
    wrapped = model.train_function
    multiply = getattr(hold._masks, "_call", None)  # TensorFlow's traced multiply
    masks = zero_half(model)
    hold.update()
    assert model.train_function is wrapped
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for variable, mask in zip(kernels(model), masks):
        assert np.all(keras.ops.convert_to_numpy(variable)[~mask] == 0)
    # The new masks were written into the variables the multiply reads, not
    # a new trace of it; and a release keeps both for the next hold.
    assert getattr(hold._masks, "_call", None) is multiply
    if BACKEND == "tensorflow":
        mask_variables = list(hold._masks.values)
        hold.release()
        hold.update()
        assert hold._masks._call is multiply and all(a is b for a, b in zip(hold._masks.values, mask_variables))
    held = {id(v): m for v, m in hold_lib.held_masks(model)}
    for variable, mask in zip(kernels(model), masks):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(held[id(variable)]), mask.astype("float32"))
        # A byte an entry under JAX, converted in the compiled multiply; else the weight's dtype.
        expected = "uint8" if BACKEND == "jax" else keras.backend.standardize_dtype(variable.dtype)
        assert keras.backend.standardize_dtype(held[id(variable)].dtype) == expected


def shrunk(monkeypatch, constraints: bool):
    # Either hold, whatever the rule would pick (PyTorch's eager step picks constraints).
    monkeypatch.setattr(hold_lib, "step_hold_refused", lambda *args: "the test asks for constraints" if constraints else None)
    model, x, y = trained()
    traced = model.train_function
    result = rk.shrink(model, x, y, sparsity=0.9, epochs=3, batch_size=32, cut_every=2)
    monkeypatch.undo()
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    return result, digest, model.train_function is traced


def test_a_shrink_held_after_each_step_ends_with_the_weights_constraints_give_bit_for_bit(monkeypatch):
    by_constraints, by_constraints_digest, kept = shrunk(monkeypatch, constraints=True)
    assert not kept  # the constraints made Keras trace a new step
    by_step, by_step_digest, kept = shrunk(monkeypatch, constraints=False)
    assert kept  # the step Keras traced before the shrink, as it was
    assert by_step.cuts == by_constraints.cuts >= 5
    assert by_step.sparsity == by_constraints.sparsity == pytest.approx(0.9, abs=0.01)
    assert by_step_digest == by_constraints_digest


@pytest.mark.skipif(BACKEND != "jax", reason="a rule of JAX's: TensorFlow traces a multiply per hold (20 ms), PyTorch compiles none")
def test_under_jax_every_hold_multiplies_by_one_function_compiled_once_for_its_shapes():
    model, x, y = trained()
    multiply = hold_lib._jax_times_masks()
    compiled = []
    for _ in range(2):  # a second shrink of the model, or a search's next trial
        hold = hold_lib.StepHold(model, kernels(model))
        zero_half(model)
        hold.update()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        hold.release()
        compiled.append(multiply._cache_size())
    assert hold_lib._jax_times_masks() is multiply
    assert compiled[0] >= 1 and compiled[1] == compiled[0]
