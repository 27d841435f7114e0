"""One-shot pruning with weight reconstruction (SparseGPT):
`keras_regkit.pruning.reconstruction`, `sparsegpt`, `linear_layers`."""

import warnings
import weakref

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import layer_inputs, linear_layers, reconstruction, sparsegpt
from keras_regkit.pruning.granularity import NM

from conftest import assert_refused_and_unchanged, row, tiny_mlp

prune_reconstructed = rk.pruning.prune_reconstructed


def numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float64")


def inputs(n, features, seed=0):
    return np.random.default_rng(seed).normal(size=(n, features)).astype("float32")


X = inputs(64, 6)
X_NAN = X.copy()
X_NAN[3, 2] = np.inf


def reference(weights, hessian, sparsity=None, pattern=None, block_size=128, dampening=0.01, free=0):
    """SparseGPT as the paper states it, one entry at a time: each cut entry
    `w_rc` is set to 0 and the rest of its row moved by `-w_rc / U_cc *
    U_c,c:` at once (`U`: upper Cholesky factor of the dampened H⁻¹); the
    mask of a block of columns (or of a group of M) is chosen when the walk
    reaches it, from the weights as updated so far. The last `free` columns
    (a bias) are only updated."""
    w = np.array(weights, dtype="float64")
    rows, columns = w.shape
    total = columns
    columns -= free
    h = hessian + dampening * np.mean(np.diag(hessian)) * np.eye(total)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        cut = set()
        if pattern is None:
            entries = sorted((w[r, c] ** 2 / u[c, c] ** 2, r * (stop - start) + c - start, r, c)
                             for r in range(rows) for c in range(start, stop))
            quota = round(sparsity * rows * stop) - round(sparsity * rows * start)
            cut = {(r, c) for _, _, r, c in entries[:quota]}
        for c in range(start, stop):
            if pattern is not None and (c - start) % pattern[1] == 0:
                for r in range(rows):
                    group = sorted(range(c, c + pattern[1]), key=lambda j: (w[r, j] ** 2 / u[j, j] ** 2, j))
                    cut |= {(r, j) for j in group[:pattern[1] - pattern[0]]}
            for r in range(rows):
                if (r, c) in cut:
                    error = w[r, c] / u[c, c]
                    for j in range(c, total):
                        w[r, j] -= error * u[c, j]
                    w[r, c] = 0.0
    return w


@pytest.mark.parametrize("granularity, sparsity, pattern, update_bias", [
    ("weight", 0.5, None, True), ("weight", 0.7, None, False), ("2:4", None, (2, 4), True), ("2:4", None, (2, 4), False)])
def test_a_dense_layer_is_pruned_as_the_numpy_reference_of_the_algorithm(granularity, sparsity, pattern, update_bias):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(5, name="k")])
    layer = model.get_layer("k")
    layer.bias.assign(np.linspace(-1.0, 1.0, 5).astype("float32"))
    x = inputs(64, 12) + 0.5  # not centred: the bias can take up the cuts' mean
    x[:, 3] *= 10.0  # an uneven Hessian: reconstruction and magnitude differ
    before = np.concatenate([numpy(layer.kernel), numpy(layer.bias)[None]])  # the bias as a last input
    result = prune_reconstructed(model, sparsity=sparsity, granularity=granularity, calibration_data=x,
                                 block_size=8, batch_size=16, allocation="uniform", update_bias=update_bias)
    after = np.concatenate([numpy(layer.kernel), numpy(layer.bias)[None]])
    rows = np.concatenate([x, np.ones((64, 1), "float32")], axis=1).astype("float64")
    if not update_bias:
        rows, before, after = rows[:, :-1], before[:-1], after[:-1]
        np.testing.assert_array_equal(numpy(layer.bias), np.linspace(-1.0, 1.0, 5).astype("float32"))
    hessian = rows.T @ rows
    expected = reference(before.T, hessian, sparsity, pattern, block_size=8, free=int(update_bias)).T
    np.testing.assert_array_equal(after == 0, expected == 0)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert result.sparsity == pytest.approx(0.5 if pattern else sparsity, abs=0.01)
    kept = after != 0
    assert not np.allclose(after[kept], before[kept])  # the kept weights were updated
    # The result reports the error of the layer's outputs on the calibration data.
    delta = (before - after).T
    measured = np.sum((delta @ hessian) * delta) / np.sum((before.T @ hessian) * before.T)
    assert result.errors["k"] == pytest.approx(measured, rel=1e-4)


def test_reconstruction_reproduces_the_outputs_better_than_magnitude_at_the_same_sparsity():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="k", use_bias=False)])
    x = inputs(200, 16) * np.linspace(0.1, 3.0, 16).astype("float32")
    y = numpy(model(x))
    weights = model.get_weights()
    prune_reconstructed(model, sparsity=0.5, calibration_data=x)
    reconstructed = np.sum((numpy(model(x)) - y) ** 2)
    model.set_weights(weights)
    rk.prune(model, sparsity=0.5)
    assert reconstructed < 0.5 * np.sum((numpy(model(x)) - y) ** 2)


def test_global_allocation_gives_each_layer_the_share_one_magnitude_threshold_takes():
    model = tiny_mlp(units=(16, 8, 4), inputs=6)
    model.get_layer("hidden1").kernel.assign(0.5 * numpy(model.get_layer("hidden1").kernel))
    weights = model.get_weights()
    rk.prune(model, sparsity=0.6)
    by_magnitude = [int((numpy(ref.variable) == 0).sum()) for ref in rk.iter_weights(model)]
    model.set_weights(weights)
    # dense_target=False: a unit of hidden1 left dead on these inputs would lose its weights in out, beyond the share.
    prune_reconstructed(model, sparsity=0.6, calibration_data=inputs(64, 6), dense_target=False)
    assert [int((numpy(ref.variable) == 0).sum()) for ref in rk.iter_weights(model)] == by_magnitude
    assert by_magnitude[1] > 0.6 * 128  # the layer of small weights loses more than its share
    model.set_weights(weights)
    prune_reconstructed(model, sparsity=0.6, calibration_data=inputs(64, 6), allocation="uniform")
    assert [int((numpy(ref.variable) == 0).sum()) for ref in rk.iter_weights(model)] == [58, 77, 19]


def test_per_layer_sparsities_prune_each_named_layer_to_its_own_and_leave_the_others():
    model = tiny_mlp(units=(16, 8, 4), inputs=6)
    weights = model.get_weights()
    x = inputs(64, 6)
    result = prune_reconstructed(model, sparsity={"hidden0": 0.25, "out": 0.75}, calibration_data=x)
    assert [int((numpy(model.get_layer(n).kernel) == 0).sum()) for n in ("hidden0", "hidden1", "out")] == [24, 0, 24]
    np.testing.assert_array_equal(numpy(model.get_layer("hidden1").kernel), weights[2])  # not named: as it was
    assert [ref.name for ref in result.refs] == ["hidden0", "out"] and sorted(result.errors) == ["hidden0", "out"]
    # The same as a uniform float where every layer gets the same.
    got = [numpy(w) for w in model.weights]
    model.set_weights(weights)
    prune_reconstructed(model, sparsity={"hidden0": 0.5, "hidden1": 0.5, "out": 0.5}, calibration_data=x)
    by_name = [numpy(w) for w in model.weights]
    model.set_weights(weights)
    prune_reconstructed(model, sparsity=0.5, calibration_data=x, allocation="uniform")
    for a, b in zip(by_name, model.weights):
        np.testing.assert_array_equal(a, numpy(b))
    assert not np.array_equal(got[0], by_name[0])


def test_per_layer_sparsities_with_a_pattern_cut_the_named_layers_to_it():
    model = tiny_mlp(units=(8, 8, 4), inputs=6)  # hidden0's 6 inputs cannot hold 2:4: left out by its 0
    kernel = numpy(model.get_layer("hidden0").kernel)
    prune_reconstructed(model, sparsity={"hidden0": 0.0, "hidden1": 0.5, "out": 0.5}, granularity="2:4",
                        calibration_data=X)
    np.testing.assert_array_equal(numpy(model.get_layer("hidden0").kernel), kernel)
    for name in ("hidden1", "out"):
        assert NM(2, 4).satisfied_by(numpy(model.get_layer(name).kernel), 0)
        assert (numpy(model.get_layer(name).kernel) == 0).mean() == 0.5


def test_prune_with_method_sparsegpt_is_the_reconstruction():
    model = tiny_mlp(units=(8, 4), inputs=6)
    weights = model.get_weights()
    result = rk.prune(model, sparsity=0.5, method="sparsegpt", calibration_data=X, hold=True)
    assert isinstance(result, reconstruction.ReconstructionResult) and result.sparsity == pytest.approx(0.5)
    assert all(ref.variable.constraint is not None for ref in result.refs)  # hold= reaches it
    got = [numpy(w) for w in model.weights]
    rk.release_zeros(model)
    model.set_weights(weights)
    prune_reconstructed(model, sparsity=0.5, calibration_data=X)
    for a, b in zip(got, model.weights):
        np.testing.assert_array_equal(a, numpy(b))


def test_zeros_on_entry_stay_zero_and_dead_inputs_lose_their_weights():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="k")])
    kernel = model.get_layer("k").kernel
    start = numpy(kernel)
    start[7] = 0.0  # an input's weights already cut, in the last block: the earlier blocks' updates reach it
    kernel.assign(start)
    x = inputs(64, 8)
    x[:, 1] = 0.0  # an input that is always zero
    prune_reconstructed(model, sparsity=0.25, calibration_data=x, block_size=2, allocation="uniform")
    after = numpy(kernel)
    assert (after[7] == 0).all() and (after[1] == 0).all()
    assert (after == 0).sum() == 6 + 3 + 3 + 6  # each block's quota (3), or its zeros where they are more


def test_zeros_on_entry_stay_zero_in_a_later_layer_fitted_to_its_unpruned_outputs():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="relu", name="first"),
                              keras.layers.Dense(4, name="second")])
    kernel = numpy(model.get_layer("second").kernel)
    kernel[:3] = 0.0  # the dense target's correction moves every weight; these must stay cut
    model.get_layer("second").kernel.assign(kernel)
    prune_reconstructed(model, sparsity=0.2, calibration_data=inputs(128, 6), allocation="uniform")
    assert (numpy(model.get_layer("second").kernel)[:3] == 0).all()


def test_sequential_calibration_reads_the_pruned_layers_outputs(monkeypatch):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="relu", name="first"),
                              keras.layers.Dense(4, name="second")])
    x = inputs(128, 6)
    first = model.get_layer("first")
    unpruned_hidden = numpy(first(x))
    hessians = []
    solve = sparsegpt.reconstruct

    def spy(weights, hessian, *args):
        hessians.append(hessian.copy())
        return solve(weights, hessian, *args)

    monkeypatch.setattr(sparsegpt, "reconstruct", spy)
    prune_reconstructed(model, sparsity=0.5, calibration_data=x, batch_size=32)
    assert [h.shape for h in hessians] == [(7, 7), (11, 11)]  # the inputs, and the bias's constant
    pruned_hidden = numpy(first(x))  # with the first layer's kernel as pruned
    np.testing.assert_allclose(hessians[1][:10, :10], pruned_hidden.T @ pruned_hidden, rtol=1e-5, atol=1e-4)
    assert not np.allclose(hessians[1][:10, :10], unpruned_hidden.T @ unpruned_hidden, rtol=1e-2)


def test_a_later_layer_is_fitted_to_its_unpruned_outputs_as_the_numpy_reference():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="relu", name="first"),
                              keras.layers.Dense(4, name="second")])
    x = inputs(128, 6)
    w1, b1, w2, b2 = [w.astype("float64") for w in model.get_weights()]
    result = prune_reconstructed(model, sparsity=0.5, calibration_data=x, allocation="uniform", batch_size=32)
    first, second = model.get_layer("first"), model.get_layer("second")
    hidden_pruned = np.concatenate([numpy(first(x)), np.ones((128, 1))], axis=1)
    hidden_dense = np.concatenate([np.maximum(x @ w1 + b1, 0.0), np.ones((128, 1))], axis=1)
    hessian, cross = hidden_pruned.T @ hidden_pruned, hidden_pruned.T @ hidden_dense
    before = np.concatenate([w2, b2[None]]).T  # outputs x inputs, the bias as a last input
    damped = hessian + 0.01 * np.mean(np.diag(hessian)) * np.eye(11)
    target = before @ cross.T @ np.linalg.inv(damped) + 0.01 * np.mean(np.diag(hessian)) * before @ np.linalg.inv(
        damped)  # argmin ||W X_d - Ŵ X||² + λ||Ŵ - W||²
    expected = reference(target, hessian, 0.5, free=1)
    after = np.concatenate([numpy(second.kernel), numpy(second.bias)[None]]).T
    np.testing.assert_array_equal(after == 0, expected == 0)
    np.testing.assert_allclose(after, expected, atol=1e-4)
    dense_out, pruned_out = hidden_dense @ before.T, hidden_pruned @ after.T
    assert result.errors["second"] == pytest.approx(
        np.sum((dense_out - pruned_out) ** 2) / np.sum(dense_out ** 2), rel=1e-3)
    # dense_target=False: the paper's target, the layer's own outputs on the pruned inputs.
    model.set_weights([w1, b1, w2, b2])
    prune_reconstructed(model, sparsity=0.5, calibration_data=x, allocation="uniform", dense_target=False)
    after = np.concatenate([numpy(second.kernel), numpy(second.bias)[None]]).T
    np.testing.assert_allclose(after, reference(before, hessian, 0.5, free=1), atol=1e-4)


def test_one_layers_gram_matrix_and_one_batch_of_its_inputs_at_a_time(monkeypatch):
    alive, sizes, batch_rows = weakref.WeakSet(), [], []

    class SpyGram(layer_inputs.Gram):
        def __init__(self, size, weights=None):
            assert not list(alive), "a second Gram matrix while another is alive"
            super().__init__(size, weights)
            alive.add(self)
            sizes.append(size)

        def add(self, rows, dense_rows=None):
            batch_rows.append(len(rows))
            super().add(rows, dense_rows)

    monkeypatch.setattr(layer_inputs, "Gram", SpyGram)
    model = tiny_mlp(units=(16, 8, 4), inputs=6)
    prune_reconstructed(model, sparsity=0.5, calibration_data=inputs(100, 6), batch_size=25)
    assert sizes == [7, 17, 9]  # each layer's own inputs (and its bias), in call order
    assert max(batch_rows) == 25 and len(batch_rows) == 3 * 4
    assert not list(alive)


def test_only_the_layer_being_calibrated_is_read_and_the_pass_stops_there(monkeypatch):
    model = tiny_mlp(units=(8, 8, 4), inputs=6)
    called = []
    out = model.get_layer("out")
    original = type(out).call

    def counting(self, *args, **kwargs):
        called.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(out), "call", counting)
    prune_reconstructed(model, sparsity=0.5, calibration_data=inputs(64, 6), batch_size=64)
    # The survey's full pass; then each layer's passes (the model as pruned so far, and as it was: the dense
    # target) stop as it reads its inputs, before computing.
    assert called == ["hidden0", "hidden1", "out", "hidden0", "hidden0", "hidden0", "hidden1", "hidden0", "hidden1"]
    assert all("call" not in vars(layer) for layer in model.layers)


@pytest.mark.parametrize("layer, shape", [
    (keras.layers.Dense(5), (3, 4, 6)),
    (keras.layers.Conv1D(6, 3, strides=2, padding="same"), (4, 11, 8)),
    (keras.layers.Conv1D(6, 3, padding="causal", dilation_rate=2), (4, 11, 8)),
    (keras.layers.Conv2D(6, (3, 2), strides=(2, 1), padding="same"), (2, 7, 6, 4)),
    (keras.layers.Conv2D(6, 3, dilation_rate=2), (2, 9, 9, 4)),
    (keras.layers.EinsumDense("abc,cde->abde", (None, 3, 4), bias_axes="de"), (2, 5, 6)),  # MHA's q, k, v
    (keras.layers.EinsumDense("abcd,cde->abe", (None, 7), bias_axes="e"), (2, 5, 3, 4)),  # MHA's output
    (keras.layers.EinsumDense("bquh,uhm->bqm", (None, 7)), (2, 5, 3, 4)),  # Llama's output
    (keras.layers.EinsumDense("...m,mh->...h", (4,)), (2, 5, 6)),
], ids=lambda v: getattr(v, "name", None) or str(v))
def test_a_covered_layer_is_its_rows_times_its_matrix(layer, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer(x)
    if getattr(layer, "bias", None) is not None:
        layer.bias.assign(np.random.default_rng(1).normal(size=layer.bias.shape).astype("float32"))
    expected = numpy(layer(x))
    linear = linear_layers.linear_layer(layer, layer.kernel, bias=True)
    outputs = linear.rows(x.astype("float64")) @ linear.matrix()
    np.testing.assert_allclose(outputs.reshape(-1), expected.reshape(-1), atol=1e-4)
    linear.assign(2.0 * linear.matrix())
    np.testing.assert_allclose(numpy(layer(x)), 2.0 * expected, atol=1e-4)


def conv_model():
    return keras.Sequential([keras.Input((20, 4)), keras.layers.Conv1D(8, 3, activation="relu", name="c1"),
                             keras.layers.Conv1D(8, 3, name="c2"),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4, name="out")])


def test_a_cnn_is_pruned_to_the_pattern_and_the_zeros_are_held():
    model = conv_model()
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(64, 20, 4)).astype("float32")
    result = prune_reconstructed(model, granularity="2:4", calibration_data=x, hold=True)
    assert [ref.name for ref in result.refs] == ["c1", "c2", "out"]
    assert result.sparsity == pytest.approx(0.5)
    model.fit(x, np.zeros((64, 4), "float32"), epochs=1, verbose=0)
    for ref in result.refs:
        assert NM(2, 4).satisfied_by(numpy(ref.variable), len(ref.variable.shape) - 2)
    report = rk.sparsity_report(model, pattern="2:4")
    assert all(s.pattern_ok for s in report.layers)


def test_the_projections_inside_a_kerashub_decoder_are_pruned():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=8)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, 32, size=(16, 8)).astype("int32"), "padding_mask": np.ones((16, 8), "int32")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every kernel is covered: no warning
        result = prune_reconstructed(backbone, sparsity=0.5, calibration_data=x)
    names = [name.split("/")[-1] for name in result.errors]
    assert names == ["query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                     "feedforward_output_dense"]
    assert result.sparsity == pytest.approx(0.5, abs=1e-4)  # shared out by magnitude (allocation="global")
    assert np.isfinite(numpy(backbone(x))).all()


# EinsumDense forms: (equation, output shape, bias axes, input shape, the kernel axis of the contracted letter the
# inputs hold innermost: where N:M groups of consecutive inputs lie).
EINSUM_FORMS = [
    ("abc,cde->abde", (None, 2, 8), "de", (5, 16), 0),  # Keras' and KerasHub's attention query, key, value
    ("abcd,cde->abe", (None, 16), "e", (5, 2, 8), 1),  # their attention output: groups along the head dimension
    ("bkm,mvh->bkvh", (None, 2, 8), None, (5, 16), 0),  # KerasHub Llama's grouped key and value
    ("bquh,uhm->bqm", (None, 16), None, (5, 2, 8), 1),  # KerasHub Llama's attention output
    ("abcd,dce->abe", (None, 16), "e", (5, 2, 8), 0),  # the kernel's axes in another order than the inputs'
]


def nm_reference(kernel, axis, n=2, m=4):
    """The N:M magnitude pattern in NumPy: along `axis`, of every M consecutive entries the N largest kept."""
    moved = np.moveaxis(np.abs(kernel), axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    kept = np.zeros(groups.shape, bool)
    np.put_along_axis(kept, np.argsort(-groups, axis=-1, kind="stable")[..., :n], True, axis=-1)
    return np.moveaxis(kept.reshape(moved.shape), -1, axis)


def nm_along(kernel, axis, n=2, m=4):
    moved = np.moveaxis(kernel, axis, -1)
    return np.count_nonzero(moved.reshape(moved.shape[:-1] + (-1, m)), axis=-1)


def einsum_model(equation, output_shape, bias_axes, shape):
    model = keras.Sequential([keras.Input(shape), keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                                                                           name="k")])
    if bias_axes:
        bias = model.get_layer("k").bias
        bias.assign(np.random.default_rng(1).normal(size=bias.shape).astype("float32"))
    return model


@pytest.mark.parametrize("equation, output_shape, bias_axes, shape, axis", EINSUM_FORMS, ids=lambda v: str(v))
def test_n_m_on_einsum_dense_lies_along_the_inputs_innermost_axis(equation, output_shape, bias_axes, shape, axis):
    model = einsum_model(equation, output_shape, bias_axes, shape)
    kernel = model.get_layer("k").kernel
    weights = model.get_weights()
    rng, features = np.random.default_rng(0), int(np.prod(shape[1:]))
    # Correlated inputs (of half as many dimensions): the kept weights can stand in for the cut ones.
    x = (rng.normal(size=(64 * shape[0], features // 2)) @ rng.normal(size=(features // 2, features)))
    x = x.reshape((64,) + shape).astype("float32")
    y = numpy(model(x))
    # The cut: the 2 largest of every 4 along the axis, as the NumPy reference keeps them.
    expected = nm_reference(numpy(kernel), axis)
    rk.prune(model, granularity="2:4")
    np.testing.assert_array_equal(numpy(kernel) != 0, expected)
    magnitude_error = np.sum((numpy(model(x)) - y) ** 2)
    assert rk.sparsity_report(model, pattern="2:4").layers[0].pattern_ok
    # The reconstruction: 2 of every 4 along the same axis, and closer outputs.
    model.set_weights(weights)
    prune_reconstructed(model, granularity="2:4", calibration_data=x)
    assert (nm_along(numpy(kernel), axis) == 2).all()
    assert np.sum((numpy(model(x)) - y) ** 2) < 0.7 * magnitude_error
    assert linear_layers.linear_layer(model.get_layer("k"), kernel).group_axis == kernel.shape[axis]


def calibration_forms():
    x = inputs(96, 6)
    tf = pytest.importorskip("tensorflow")

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[32 * i:32 * (i + 1)], np.zeros(32)

    return x, {
        "dataset": tf.data.Dataset.from_tensor_slices(x).batch(32),
        "dataset-of-pairs": tf.data.Dataset.from_tensor_slices((x, np.zeros(96))).batch(32),
        "pydataset": Batches(),
        "generator": (x[i:i + 32] for i in range(0, 96, 32)),
    }


@pytest.mark.parametrize("form", ["dataset", "dataset-of-pairs", "pydataset", "generator", "dict"])
def test_every_form_of_calibration_data_gives_what_arrays_give(form):
    x, forms = calibration_forms()
    if form == "dict":
        features = keras.Input((6,), name="features")
        model = keras.Model({"features": features}, keras.layers.Dense(4, name="k")(
            keras.layers.Dense(8, activation="relu", name="h")(features)))
        data = {"features": x}
    else:
        model, data = tiny_mlp(units=(8, 4), inputs=6), forms[form]
    weights = model.get_weights()
    prune_reconstructed(model, sparsity=0.5, calibration_data=data)
    got = [numpy(w) for w in model.weights]
    model.set_weights(weights)
    prune_reconstructed(model, sparsity=0.5, calibration_data=x if form != "dict" else {"features": x},
                        batch_size=32)
    for a, b in zip(got, model.weights):
        np.testing.assert_allclose(a, numpy(b), atol=1e-6)


def test_a_layer_kind_not_covered_is_named_and_left_untouched():
    model = keras.Sequential([keras.Input((10, 4)), keras.layers.Conv1DTranspose(4, 3, name="transposed"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="out")])
    transposed = numpy(model.get_layer("transposed").kernel)
    x = np.random.default_rng(0).normal(size=(64, 10, 4)).astype("float32")
    with pytest.warns(UserWarning, match="left untouched: 'transposed' \\(a Conv1DTranspose\\)"):
        result = prune_reconstructed(model, sparsity=0.5, calibration_data=x)
    assert [ref.name for ref in result.refs] == ["out"]
    assert result.untouched == {"transposed": "a Conv1DTranspose"}
    np.testing.assert_array_equal(numpy(model.get_layer("transposed").kernel), transposed)


def transposed_only():
    return keras.Sequential([keras.Input((10, 4)), keras.layers.Conv1DTranspose(4, 3, name="transposed")])


def overflowing(model):
    """hidden0's outputs overflow to inf: the failure comes after hidden0 is
    pruned, and the model must be put back."""
    model.get_layer("hidden0").kernel.assign(np.full((6, 8), 3e38, "float32"))


def with_nan(model):
    kernel = numpy(model.get_layer("hidden0").kernel)
    kernel[0, 0] = np.nan
    model.get_layer("hidden0").kernel.assign(kernel)



BAD_INPUT = [
    row("no-calibration-data", lambda m: prune_reconstructed(m, sparsity=0.5), ValueError, "calibration_data=None"),
    row("wrong-shape", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=inputs(64, 3)), ValueError,
        "`calibration_data`: the model cannot be called on it"),
    row("empty", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=inputs(0, 6)), ValueError,
        "holds no samples"),
    row("not-inputs-a-number", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=3.0), TypeError,
        "calibration_data=3.0 of type float"),
    row("not-inputs-a-list-with-none", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=[None]),
        TypeError, "Invalid value for argument `calibration_data`: expected inputs"),
    row("not-inputs-a-path", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data="x.npy"), TypeError,
        "of type str"),
    row("the-model-cannot-take-a-dict", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data={"x": X}),
        ValueError, "`calibration_data`: the model cannot be called on it"),
    row("the-model-cannot-take-strings", lambda m: prune_reconstructed(
        m, sparsity=0.5, calibration_data=np.full((64, 6), "a")), ValueError, "the model cannot be called on it"),
    row("wrong-shape-in-a-later-batch", lambda m: prune_reconstructed(
        m, sparsity=0.5, calibration_data=iter([X[:32], X[:32, :3]])), ValueError, "the model cannot be called on it"),
    row("empty-generator", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=iter([])), ValueError,
        "holds no samples"),
    row("non-finite-in-a-later-batch", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=iter(
        [X[:32], X_NAN[:32] * np.inf])), ValueError, "batch 1 (from sample 32)"),
    row("all-zero-data", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=np.zeros((64, 6), "float32")),
        ValueError, "'hidden0' reads only zeros on it (each of its 6 inputs is 0 on every sample)"),
    row("a-later-layer-reads-only-zeros", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X),
        ValueError, "'out' reads only zeros on it (each of its 8 inputs is 0 on every sample, the layers before it "
        "pruned)", prepare=lambda m: m.get_layer("hidden0").bias.assign(np.full(8, -1e3, "float32"))),
    row("too-few-samples-for-a-convolution", lambda m: prune_reconstructed(
        conv_model(), sparsity=0.5, calibration_data=np.ones((1, 20, 4), "float32")), ValueError,
        "'c2' 16 input rows (16 per sample), fewer than the 24 inputs its kernel reads"),
    row("too-few-samples-from-a-dataset-says-the-cap", lambda m: prune_reconstructed(
        m, sparsity=0.5, calibration_data=iter([X[:4]])), ValueError, "unless `calibration_steps` is given"),
    row("non-finite-data", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X_NAN), ValueError,
        "NaN or inf"),
    row("non-finite-activations", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X), ValueError,
        "the inputs of 'out' reach NaN or inf", prepare=overflowing),
    row("non-finite-weights", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X), ValueError,
        "NaN or inf", prepare=with_nan),
    row("too-few-samples", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=inputs(4, 6)), ValueError,
        "fewer than the 6 inputs its kernel reads"),
    row("too-few-samples-says-how-many", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=inputs(7, 6)),
        ValueError, "Pass at least 8 samples"),
    row("pattern-the-layer-cannot-hold", lambda m: prune_reconstructed(m, granularity="2:4", calibration_data=X),
        ValueError, "'hidden0' has 6 inputs"),
    row("sparsity-with-pattern", lambda m: prune_reconstructed(m, sparsity=0.3, granularity="2:4",
                                                               calibration_data=X), ValueError, "whole pattern"),
    row("per-layer-unknown-name", lambda m: prune_reconstructed(m, sparsity={"hidden": 0.5}, calibration_data=X),
        ValueError, "it names ['hidden'], which are not covered kernels of the selection. Valid names: "
        "['hidden0', 'out']"),
    row("per-layer-outside-the-selection", lambda m: prune_reconstructed(
        m, sparsity={"out": 0.5}, calibration_data=X, layers="hidden0"), ValueError, "it names ['out']"),
    row("per-layer-not-a-covered-kind", lambda m: prune_reconstructed(
        transposed_only(), sparsity={"transposed": 0.5}, calibration_data=np.ones((8, 10, 4), "float32")),
        ValueError, "'transposed' (a Conv1DTranspose)"),
    row("per-layer-value-1", lambda m: prune_reconstructed(m, sparsity={"out": 1.0}, calibration_data=X), ValueError,
        "each layer's sparsity must be in [0, 1)"),
    row("per-layer-value-negative", lambda m: prune_reconstructed(m, sparsity={"out": -0.1}, calibration_data=X),
        ValueError, "sparsity['out']"),
    row("per-layer-value-nan", lambda m: prune_reconstructed(m, sparsity={"out": float("nan")}, calibration_data=X),
        ValueError, "sparsity['out']"),
    row("per-layer-value-str", lambda m: prune_reconstructed(m, sparsity={"out": "half"}, calibration_data=X),
        TypeError, "sparsity['out']"),
    row("per-layer-key-not-str", lambda m: prune_reconstructed(m, sparsity={0: 0.5}, calibration_data=X), TypeError,
        "keys are layer names"),
    row("per-layer-pattern-the-layer-cannot-hold", lambda m: prune_reconstructed(
        m, sparsity={"hidden0": 0.5, "out": 0.5}, granularity="2:4", calibration_data=X), ValueError,
        "'hidden0' has 6 inputs"),
    row("per-layer-other-than-the-pattern", lambda m: prune_reconstructed(
        m, sparsity={"out": 0.25}, granularity="2:4", calibration_data=X), ValueError,
        "cut to the whole pattern (0.5) or left as it is (0). Received: sparsity['out']=0.25"),
    row("per-layer-later-layer-too-few-samples", lambda m: prune_reconstructed(
        m, sparsity={"out": 0.5}, calibration_data=inputs(5, 6)), ValueError, "'out' 5 input rows"),
    row("no-sparsity", lambda m: prune_reconstructed(m, calibration_data=X), ValueError, "needs `sparsity`"),
    row("sparsity-above-1", lambda m: prune_reconstructed(m, sparsity=1.5, calibration_data=X), ValueError,
        "sparsity"),
    row("sparsity-str", lambda m: prune_reconstructed(m, sparsity="half", calibration_data=X), TypeError, "sparsity"),
    row("granularity-unit", lambda m: prune_reconstructed(m, sparsity=0.5, granularity="unit", calibration_data=X),
        ValueError, "granularity='weight' or 'N:M'"),
    row("granularity-typo", lambda m: prune_reconstructed(m, sparsity=0.5, granularity="2-4", calibration_data=X),
        ValueError, "granularity"),
    row("hold-str", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, hold="yes"), TypeError,
        "hold"),
    row("batch-size-0", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, batch_size=0), ValueError,
        "batch_size"),
    row("calibration-steps-0", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X,
                                                             calibration_steps=0), ValueError, "calibration_steps"),
    row("block-size-float", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, block_size=2.5),
        TypeError, "block_size"),
    row("dampening-negative", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, dampening=-1.0),
        ValueError, "dampening"),
    row("allocation-typo", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, allocation="even"),
        ValueError, "allocation"),
    row("update-bias-none", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, update_bias=None),
        TypeError, "update_bias"),
    row("dense-target-str", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X, dense_target="no"),
        TypeError, "dense_target"),
    row("prune-method-typo", lambda m: rk.prune(m, sparsity=0.5, method="obs"), ValueError, "argument `method`"),
    row("prune-sparsegpt-with-a-score", lambda m: rk.prune(m, sparsity=0.5, method="sparsegpt", score="wanda",
                                                           calibration_data=X), ValueError, "['score']"),
    row("prune-sparsegpt-by-threshold", lambda m: rk.prune(m, threshold=0.1, method="sparsegpt",
                                                           calibration_data=X), ValueError, "['threshold']"),
    row("prune-sparsegpt-without-data", lambda m: rk.prune(m, sparsity=0.5, method="sparsegpt"), ValueError,
        "calibration_data=None"),
    row("selector-matches-nothing", lambda m: prune_reconstructed(m, sparsity=0.5, calibration_data=X,
                                                                  layers="nothing*"), ValueError, "matched no layer"),
    row("no-covered-layer", lambda m: prune_reconstructed(transposed_only(), sparsity=0.5,
                                                          calibration_data=np.ones((8, 10, 4), "float32")),
        ValueError, "the selection has none: ['transposed']"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
