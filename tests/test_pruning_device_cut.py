"""The cut of entries on the device (`pruning.select`) against the NumPy
reference (`cut` given NumPy scores): the same masks, the exact count, ties
by position, dead entries first, nothing out of reach cut; only scalars
cross to the host; and the zeros' masks are read live by the train step."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_regkit as rk
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import cut as cut_lib
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.pruning import hold as hold_lib
from keras_regkit.pruning import scores as scores_lib

SHAPES = ((13, 7), (7,), (7, 5))  # refs of different sizes: positions run across them


def model_with(kernels) -> keras.Model:
    inputs = keras.Input((SHAPES[0][0],))
    x = keras.layers.Dense(SHAPES[0][1], name="a")(inputs)
    outputs = keras.layers.Dense(SHAPES[2][1], use_bias=False, name="b")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("a").kernel.assign(kernels[0])
    model.get_layer("a").bias.assign(kernels[1])
    model.get_layer("b").kernel.assign(kernels[2])
    return model


def refs_of(model):
    return weights_lib.select_weights(model, "*", ("kernel", "bias"))


def tied_arrays(seed, levels=4, dead=0.2, special=None):
    """Weights with many ties (few levels) and dead entries, and scores
    drawn from few levels too, with `special` (inf or NaN) sprinkled in."""
    rng = np.random.default_rng(seed)
    weights, scores = [], []
    for shape in SHAPES:
        w = rng.integers(1, levels + 1, shape).astype("float32") * rng.choice([-1.0, 1.0], shape).astype("float32")
        w[rng.random(shape) < dead] = 0.0
        s = rng.integers(0, levels, shape).astype("float32") / levels
        if special is not None:
            s[rng.random(shape) < 0.1] = special
        weights.append(w)
        scores.append(s)
    return weights, scores


def both_cuts(weights, scores, **how):
    """(Cut, zero masks) of the NumPy reference and of the device cut, each
    on its own model holding `weights`."""
    out = []
    for on_device in (False, True):
        model = model_with(weights)
        refs = refs_of(model)
        given = [ops.convert_to_tensor(s) for s in scores] if on_device else [np.array(s) for s in scores]
        made = cut_lib.cut(refs, given, granularity_lib.Weights(["kernel", "bias"]), **how)
        out.append((made, [ops.convert_to_numpy(ref.variable.value) == 0 for ref in refs]))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity", [0.0, 0.05, 0.2, 0.37, 0.5, 0.81, 0.9, 1.0])
def test_device_cut_matches_numpy_reference_on_ties(seed, sparsity):
    weights, scores = tied_arrays(seed)
    (reference, reference_masks), (device, device_masks) = both_cuts(weights, scores, sparsity=sparsity)
    assert device == reference
    for expected, got in zip(reference_masks, device_masks):
        np.testing.assert_array_equal(got, expected)


def test_device_cut_takes_exactly_round_s_n_first_ties_by_position():
    # Every live score equal: the cut is the first entries by position, across the refs in order.
    weights = [np.ones(shape, "float32") for shape in SHAPES]
    scores = [np.full(shape, 0.5, "float32") for shape in SHAPES]
    total = sum(int(np.prod(shape)) for shape in SHAPES)
    for sparsity in (0.3, 0.6, 0.95):
        _, (made, masks) = both_cuts(weights, scores, sparsity=sparsity)
        count = int(round(sparsity * total))
        assert made.zeros == count and made.threshold == 0.5
        flat = np.concatenate([m.reshape(-1) for m in masks])
        np.testing.assert_array_equal(flat, np.arange(total) < count)


def test_device_cut_takes_dead_entries_first_and_at_least_all_of_them():
    weights, scores = tied_arrays(7, dead=0.0)
    weights[2][:3] = 0.0  # dead entries late in the order, where live scores of 0 come before them
    dead = sum(int((w == 0).sum()) for w in weights)
    for sparsity in (0.0, 0.01, dead / sum(w.size for w in weights)):
        _, (made, masks) = both_cuts(weights, scores, sparsity=sparsity)
        assert made.zeros == dead and made.threshold == 0.0  # raised to the dead, no live entry cut
        for w, m in zip(weights, masks):
            np.testing.assert_array_equal(m, w == 0)


@pytest.mark.parametrize("special", [np.inf, np.nan])
def test_device_cut_never_cuts_scores_out_of_reach(special):
    weights, scores = tied_arrays(3, special=special)
    for sparsity in (0.5, 1.0):
        (reference, reference_masks), (device, device_masks) = both_cuts(weights, scores, sparsity=sparsity)
        assert device == reference and device.threshold is not None and np.isfinite(device.threshold)
        for w, s, expected, got in zip(weights, scores, reference_masks, device_masks):
            np.testing.assert_array_equal(got, expected)
            assert not got[~np.isfinite(s) & (w != 0)].any()


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.1, 0.5000001, 10.0])
def test_device_threshold_cut_matches_numpy_reference(threshold):
    weights, scores = tied_arrays(5)
    scores[0][0, 0] = np.float32(0.1)  # above 0.1 as a float64: not cut at threshold=0.1
    (reference, reference_masks), (device, device_masks) = both_cuts(weights, scores, threshold=threshold)
    assert device == reference
    for expected, got in zip(reference_masks, device_masks):
        np.testing.assert_array_equal(got, expected)


def test_device_cut_matches_numpy_reference_on_continuous_scores():
    rng = np.random.default_rng(11)
    weights = [rng.normal(size=shape).astype("float32") for shape in SHAPES]
    weights[0][rng.random(SHAPES[0]) < 0.3] = 0.0
    scores = [np.abs(w) * rng.random(w.shape).astype("float32") for w in weights]
    (reference, reference_masks), (device, device_masks) = both_cuts(weights, scores, sparsity=0.77)
    assert device == reference
    for expected, got in zip(reference_masks, device_masks):
        np.testing.assert_array_equal(got, expected)


def test_curvature_and_magnitude_tensors_equal_their_numpy_scores():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(np.ones((8, 6), "float32"), np.zeros((8, 4), "float32"), verbose=0)
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    for score in (scores_lib.Curvature(), scores_lib.Magnitude()):
        on_device = score.tensors(refs, model.optimizer)
        assert not isinstance(on_device[0], np.ndarray)
        w = ops.convert_to_numpy(refs[0].variable.value)
        v = ops.convert_to_numpy(scores_lib.second_moment(model.optimizer, refs[0].variable))
        expected = np.abs(w) * (np.sqrt(np.sqrt(v)) if score.name == "curvature" else 1.0)
        np.testing.assert_allclose(score.scores(refs, model.optimizer)[0], expected, rtol=1e-6)
        # The device's own ops: within the backend's rounding of sqrt (PyTorch's
        # CPU sqrt is not correctly rounded), never another formula.
        np.testing.assert_array_max_ulp(ops.convert_to_numpy(on_device[0]), expected, maxulp=2)


def test_shrink_cut_copies_only_scalars_to_the_host(monkeypatch):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="h"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = np.random.default_rng(0).normal(size=(64, 16)).astype("float32"), np.zeros((64, 2), "float32")
    model.fit(x, y, verbose=0)
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    scores = scores_lib.Curvature().tensors(refs, model.optimizer)
    converted = []
    real = keras.ops.convert_to_numpy
    monkeypatch.setattr(keras.ops, "convert_to_numpy", lambda value: converted.append(np.size(real(value))) or real(value))
    granularity = granularity_lib.Weights()
    made = cut_lib.cut(refs, scores, granularity, sparsity=0.6)
    assert granularity.count_dead(refs) == (made.zeros, made.total)
    assert converted and max(converted) <= 8  # a few scalars, never a weight


def test_shrink_cuts_on_the_device_only_where_the_weights_are_off_the_cpu():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    on_accelerator = not scores_lib.on_cpu(refs[0].variable)
    assert isinstance(scores_lib.for_cut(scores_lib.Magnitude(), refs, None), scores_lib.OnHost) != on_accelerator


def test_held_masks_are_read_live_without_retracing_the_step(monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 8)).astype("float32")
    rk.prune(model, sparsity=0.25, hold=True)  # before the optimizer is built
    model.fit(x, y, epochs=1, verbose=0)
    rebuilt = []
    make = model.make_train_function
    monkeypatch.setattr(model, "make_train_function", lambda force=False: rebuilt.append(force) or make(force))
    kernel = model.get_layer("d").kernel
    refs = weights_lib.select_weights(model, "*", ("kernel",))
    for sparsity in (0.5, 0.75):
        cut_lib.cut(refs, scores_lib.Magnitude().tensors(refs), granularity_lib.Weights(), sparsity=sparsity)
        hold_lib.hold_zeros(model, [kernel])
        cut_zeros = ops.convert_to_numpy(kernel) == 0
        model.fit(x, y, epochs=2, verbose=0)
        np.testing.assert_array_equal(ops.convert_to_numpy(kernel) == 0, cut_zeros)  # the new mask held
    # TensorFlow's and PyTorch's step read the mask variable live. JAX's reads
    # only the variables passed into it: the mask, made before the optimizer
    # was built, was a constant of the first trace; the first new mask joins
    # the optimizer's variables (one rebuild), the second needs none.
    assert rebuilt.count(True) == (1 if keras.backend.backend() == "jax" else 0)


def test_under_jax_a_held_mask_rides_in_the_applying_optimizer_until_released():
    # LossScaleOptimizer (mixed precision): the inner optimizer applies the
    # constraints, so the mask must be among the inner one's variables.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5)), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 8)).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    before = len(model.optimizer.variables)
    rk.prune(model, sparsity=0.5, hold=True)
    passed = [v for v in model.optimizer.inner_optimizer.variables if v.name == hold_lib.MASK_NAME]
    assert len(passed) == (1 if keras.backend.backend() == "jax" else 0)
    model.fit(x, y, epochs=2, verbose=0)
    assert float(ops.mean(ops.cast(ops.equal(model.get_layer("d").kernel, 0), "float32"))) == 0.5
    rk.release_zeros(model)
    assert len(model.optimizer.variables) == before  # the optimizer's own state, as before the hold


def test_a_snapshot_keeps_the_optimizer_state_but_not_the_masks_passed_into_the_step():
    from keras_regkit.shrinking.snapshots import Snapshot, optimizer_slots

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
    model.compile(keras.optimizers.Adam(0.1), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    model.fit(x, x @ np.ones((4, 8), "float32"), epochs=1, verbose=0)
    slots = len(optimizer_slots(model.optimizer))
    rk.prune(model, sparsity=0.5, hold=True)
    snapshot = Snapshot.take(model, step=0, sparsity=0.5)
    assert len(snapshot.slots) == slots == 4  # Adam's two per weight, no mask (JAX passes one into its step)


def test_a_model_saved_while_zeros_are_held_reloads_with_its_optimizer_state(tmp_path):
    # Under JAX the masks ride in the optimizer's variables while held; what
    # it saves (and a backup restores) is its own state, without them.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
    model.compile(keras.optimizers.Adam(0.1), "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = x @ np.ones((4, 8), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    rk.prune(model, sparsity=0.5, hold=True)
    model.fit(x, y, epochs=1, verbose=0)
    own = [v for v in model.optimizer.variables if v.name != hold_lib.MASK_NAME]
    with warnings.catch_warnings():
        # Keras warns, and loads none of the optimizer's state, where the counts differ.
        warnings.filterwarnings("error", message="Skipping variable loading")
        model.save(tmp_path / "held.keras")
        loaded = keras.saving.load_model(tmp_path / "held.keras")
    assert len(loaded.optimizer.variables) == len(own)
    for mine, theirs in zip(own, loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(theirs), ops.convert_to_numpy(mine))
    assert len(model.optimizer.variables) == len(own) + (keras.backend.backend() == "jax")  # still held here


def _fitted_two_kernels(optimizer="adam"):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d"), keras.layers.Dense(3, name="e")])
    model.compile(optimizer, "mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 3)).astype("float32")
    model.fit(x, y, epochs=1, verbose=0)
    return model, x, y


def _patched(optimizer):
    return sorted(name for name in vars(optimizer) if name.endswith("_own_variables"))


def test_a_model_holding_zeros_in_several_weights_has_unique_variable_paths(tmp_path):
    # Under JAX the masks are among the optimizer's variables, which
    # `get_state_tree` (and Orbax checkpoints) and the legacy H5 format key by path.
    model, x, y = _fitted_two_kernels(keras.optimizers.Adam())
    rk.prune(model, sparsity=0.5, hold=True)
    masks = [v.constraint.mask for v in (model.get_layer("d").kernel, model.get_layer("e").kernel)]
    assert len({mask.path for mask in masks}) == 2 and all(mask.name == hold_lib.MASK_NAME for mask in masks)
    if keras.backend.backend() == "jax":
        model.get_state_tree()  # was: "The following variable path is found twice in the model"
    model.save(tmp_path / "held.h5")  # was, under JAX: "Unable to synchronously create dataset (name already exists)"
    model.fit(x, y, epochs=1, verbose=0)
    assert rk.release_zeros(model) == 2


def test_quantization_aware_training_takes_its_masks_out_of_the_optimizer_step():
    from keras_regkit.quantization import Int8Training

    model, x, y = _fitted_two_kernels()
    before = len(model.optimizer.variables)
    rk.prune(model, sparsity=0.5)
    int8 = Int8Training(x)
    with int8:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[int8])
    assert model.get_layer("d").kernel.constraint is None
    assert len(model.optimizer.variables) == before and not _patched(model.optimizer)


def test_a_release_after_a_recompile_takes_the_masks_out_of_the_old_optimizer_too():
    model, x, y = _fitted_two_kernels()
    old = model.optimizer
    before = len(old.variables)
    rk.prune(model, sparsity=0.5, hold=True)
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(x, y, epochs=1, verbose=0)
    rk.prune(model, sparsity=0.6, hold=True)  # under JAX: into the new optimizer's step as well
    model.fit(x, y, epochs=1, verbose=0)
    assert rk.release_zeros(model) == 2
    assert len(old.variables) == before and not _patched(old)
    assert not [v for v in model.optimizer.variables if v.name == hold_lib.MASK_NAME] and not _patched(model.optimizer)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_zeros_counted_on_the_host_equal_the_count_by_ops(dtype, monkeypatch):
    from keras_regkit.pruning import select

    values = np.array([[0.0, -0.0, 1.5], [np.nan, 0.0, -2.0]])
    variables = [keras.Variable(values, dtype=dtype), keras.Variable(np.zeros((3,)), dtype=dtype)]
    np.testing.assert_array_equal(select.host_view(variables[0].value).astype("float32"), values)
    on_host = select.count_zeros(variables)
    assert on_host == (6, 9)  # -0.0 is a zero, NaN is not
    monkeypatch.setattr(select, "on_cpu", lambda variable: False)
    assert select.count_zeros(variables) == on_host


def test_zeros_no_numpy_view_can_read_are_counted_by_ops(monkeypatch):
    from keras_regkit.pruning import select

    variables = [keras.Variable(np.array([0.0, 3.0, 0.0]))]

    def unreadable(value):  # a tensor NumPy cannot read (the count must not fail for it)
        raise RuntimeError("spans non-addressable devices")

    monkeypatch.setattr(select, "host_view", unreadable)
    assert select.count_zeros(variables) == (2, 3)


def test_host_reads_share_memory_and_keep_what_they_read():
    # What a cut on the CPU reads (the weights, the scores) it reads without
    # a copy: a copy of every weight per cut was a third of a late cut's
    # time at 5 M parameters. Under TensorFlow the view is of a read, which
    # the variable's next assignment leaves as it was.
    from keras_regkit.pruning import select

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
    variable = model.layers[0].kernel
    variable.assign(np.array([[0.0, 1.5], [-2.0, 3.0]]))
    view = select.host_view(variable.value)
    assert not view.flags.owndata and not view.flags.writeable  # under PyTorch the parameter's own memory
    np.testing.assert_array_equal(view, [[0.0, 1.5], [-2.0, 3.0]])
    if keras.backend.backend() == "tensorflow":
        variable.assign(np.zeros((2, 2)))
        np.testing.assert_array_equal(view, [[0.0, 1.5], [-2.0, 3.0]])
    refs = granularity_lib.Weights().select(model, "*")
    scores = scores_lib.Magnitude().scores(refs)
    assert not scores[0].flags.owndata and not scores[0].flags.writeable
    np.testing.assert_array_equal(scores[0], np.abs(select.host_view(variable.value)))


@pytest.mark.parametrize("shape", [(), (3,)], ids=["scalar", "vector"])
def test_host_reads_any_weight_of_half_precision(shape):
    # NumPy cannot view TensorFlow's 0-d bfloat16 tensor: it is read by a copy.
    from keras_regkit.pruning import select

    for dtype in ("float16", "bfloat16"):
        variable = keras.Variable(np.full(shape, -1.5), dtype=dtype)
        np.testing.assert_array_equal(select.host_view(variable.value).astype("float32"), np.full(shape, -1.5))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_holds_masks_are_one_where_an_entry_is_not_an_exact_zero(dtype):
    from keras_regkit.pruning import select

    values = [keras.Variable(np.array([[0.0, -0.0, 1.5], [np.nan, 0.0, -2.0]]), dtype=dtype).value,
              keras.Variable(np.array([np.inf, 0.0]), dtype=dtype).value]
    masks = select.nonzero_masks(values)
    # Under JAX a byte a mask entry, converted in the compiled multiply; elsewhere as a constraint multiplies.
    expected = "uint8" if keras.backend.backend() == "jax" else dtype
    assert [keras.backend.standardize_dtype(m.dtype) for m in masks] == [expected] * 2
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(masks[0], "float32")), [[0, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(masks[1], "float32")), [1, 0])  # -0.0 is a zero, NaN is not


def test_a_hold_zeroes_as_a_product_does_keeping_the_sign_of_zero():
    # A negative entry held at zero becomes -0.0, as with a float mask: a
    # select (what XLA makes of a product by a boolean) would give +0.0.
    held = hold_lib.HoldZeros(keras.Variable(np.array([[0.0, 2.0], [-3.0, 0.0]], "float32")))
    assert keras.backend.standardize_dtype(held.mask.dtype) == ("uint8" if keras.backend.backend() == "jax" else "float32")

    def moved():
        return ops.convert_to_tensor(np.array([[-5.0, 2.5], [-3.5, -7.0]], "float32"))

    products = [held(moved())]
    if keras.backend.backend() == "jax":  # compiled: in the step, and after it (`StepHold`)
        import jax

        products += [jax.jit(held)(moved()), hold_lib._jax_times_masks()([moved()], [held.mask.value])[0]]
    for out in map(ops.convert_to_numpy, products):
        np.testing.assert_array_equal(out, [[0.0, 2.5], [-3.5, 0.0]])
        assert np.signbit(out).tolist() == [[True, False], [True, True]]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX compiles its eager ops for each shape")
def test_under_jax_a_holds_masks_are_made_by_one_function_compiled_once_for_their_shapes():
    from keras_regkit.pruning import select

    shapes = [(3, 4), (4,), (4, 2)]
    masks_function = select._jax_nonzero_masks()
    select.nonzero_masks([ops.zeros(s) for s in shapes])
    compiled = masks_function._cache_size()
    assert compiled >= 1  # this function made them
    select.nonzero_masks([ops.ones(s) for s in shapes])  # new values, the same shapes
    assert select._jax_nonzero_masks() is masks_function and masks_function._cache_size() == compiled


def test_only_a_tensor_in_the_hosts_memory_is_read_on_the_host():
    from keras_regkit.pruning import select

    class OnAnAccelerator:
        device = "cuda:0"

    assert select.host_array(OnAnAccelerator()) is None
    variable = keras.Variable(np.ones((2, 2), "float32"))
    if select.on_cpu(variable):
        np.testing.assert_array_equal(select.host_array(variable.value), np.ones((2, 2)))
    else:  # this machine's default device is an accelerator
        assert select.host_array(variable.value) is None


def test_dead_units_read_on_the_host_equal_those_reduced_by_ops(monkeypatch):
    from keras_regkit.pruning import select
    from keras_regkit.pruning import units as units_lib

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d"),
                              keras.layers.Dense(3, name="e")])
    model.get_layer("d").kernel.assign(np.array([[1.0, 0, -0.0, -3.0], [0, 0, -0.0, 0], [0, 0, 0, 0]], "float32"))
    model.get_layer("e").kernel.assign(np.array([[0.0, 0, 0], [0, np.nan, 0], [0, 0, 0], [0, 0, 0]], "float32"))
    on_host = units_lib.dead_units(model)
    assert on_host == {"d": (2, 4), "e": (2, 3)}  # -0.0 is a zero, NaN is not
    monkeypatch.setattr(select, "host_array", lambda value: None)  # as on an accelerator
    assert units_lib.dead_units(model) == on_host


def test_a_weight_listed_twice_is_held_by_one_constraint():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    kernel = model.layers[0].kernel
    kernel.assign(np.array([[0.0, 1.0], [2.0, 0.0], [3.0, 4.0]]))
    hold_lib.hold_zeros(model, [kernel, kernel])
    assert isinstance(kernel.constraint, hold_lib.HoldZeros) and kernel.constraint.inner is None
    hold_lib.hold_zeros(model, [kernel, kernel])  # held already: a new mask, the same constraint
    assert kernel.constraint.inner is None
    np.testing.assert_array_equal(ops.convert_to_numpy(kernel.constraint.mask), [[0, 1], [1, 0], [1, 1]])
