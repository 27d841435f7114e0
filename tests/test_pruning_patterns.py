"""N:M patterns and the one-shot Wanda score, on the pruning core
(`keras_regkit.pruning.cut`, `scores.Wanda`, `calibration`)."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning.granularity import NM

from conftest import tiny_mlp


def groups(kernel, m, axis=-2):
    """`kernel`'s entries in groups of `m` along its input axis."""
    moved = np.moveaxis(kernel, axis, -1)
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def conv_models():
    return {
        "dense": keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="k"), keras.layers.Dense(2)]),
        "conv1d": keras.Sequential([keras.Input((10, 8)), keras.layers.Conv1D(6, 3, name="k"),
                                    keras.layers.Flatten(), keras.layers.Dense(2)]),
        "conv2d": keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(6, 3, name="k"),
                                    keras.layers.Flatten(), keras.layers.Dense(2)]),
        "depthwise": keras.Sequential([keras.Input((6, 6, 8)), keras.layers.DepthwiseConv2D(3, name="k"),
                                       keras.layers.Flatten(), keras.layers.Dense(2)]),
    }


@pytest.mark.parametrize("kind", ["dense", "conv1d", "conv2d", "depthwise"])
def test_two_four_keeps_the_two_largest_of_every_group_of_four_inputs(kind):
    model = conv_models()[kind]
    kernel = model.get_layer("k").kernel
    before = numpy(kernel)
    weights = "depthwise_kernel" if kind == "depthwise" else "kernel"
    result = rk.prune(model, granularity="2:4", layers="k", weights=weights)
    after = numpy(kernel)
    assert result.sparsity == pytest.approx(0.5)
    kept = groups(after, 4) != 0
    assert (kept.sum(axis=-1) == 2).all()
    # The kept ones are each group's two largest.
    magnitude = groups(np.abs(before), 4)
    smallest_kept = np.where(kept, magnitude, np.inf).min(axis=-1)
    largest_cut = np.where(kept, -np.inf, magnitude).max(axis=-1)
    assert (smallest_kept >= largest_cut).all()
    assert NM(2, 4).satisfied_by(after, after.ndim - 2)
    report = rk.sparsity_report(model, weights, pattern="2:4")
    assert [s.pattern_ok for s in report.layers if s.name.startswith("k")] == [True]
    assert str(report).splitlines()[0].split()[-1] == "2:4"
    assert report.to_dict()["pattern"] == "2:4"


def test_a_pattern_is_held_through_fit_and_reported_by_the_monitor():
    model = tiny_mlp(units=(8, 4), inputs=8)
    model.compile("adam", "mse")
    rk.prune(model, granularity="2:4", hold=True)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    monitor = rk.callbacks.SparsityMonitor(pattern="2:4")
    history = model.fit(x, np.zeros((64, 4), "float32"), epochs=2, verbose=0, callbacks=[monitor])
    for ref in rk.iter_weights(model):
        assert NM(2, 4).satisfied_by(numpy(ref.variable), 0)
    assert history.history["pattern_ok"] == [1.0, 1.0]


def test_a_partial_cut_moves_towards_the_pattern_and_never_past_it():
    model = tiny_mlp(units=(8, 4), inputs=8)
    rk.prune(model, granularity="2:4", sparsity=0.25)
    kernels = [numpy(ref.variable) for ref in rk.iter_weights(model)]
    assert sum((k == 0).sum() for k in kernels) == round(0.25 * sum(k.size for k in kernels))
    assert all((groups(k, 4) != 0).sum(axis=-1).min() >= 2 for k in kernels)
    with pytest.raises(ValueError, match="sparsity.*0.5"):
        rk.prune(model, granularity="2:4", sparsity=0.6)


def test_the_shrink_ends_at_the_pattern():
    model = tiny_mlp(units=(16, 4), inputs=8)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 8)).astype("float32"), rng.integers(0, 4, 256)
    model.fit(x, y, epochs=1, verbose=0)
    result = rk.shrink(model, x, y, validation_data=(x, y), epochs=3, granularity="2:4", sparsity=0.5)
    assert result.sparsity == pytest.approx(0.5)
    for ref in rk.iter_weights(model):
        assert NM(2, 4).satisfied_by(numpy(ref.variable), 0)


@pytest.mark.parametrize("call, match", [
    (lambda m: rk.prune(m, granularity="4:4"), "N must be at least 1 and below M"),
    (lambda m: rk.prune(m, granularity="3:2"), "N must be at least 1 and below M"),
    (lambda m: rk.prune(m, granularity="2:5"), r"groups of 5: 'hidden0' has 8 inputs"),
    (lambda m: rk.prune(m, granularity="two:four"), "'weight', 'unit', 'head' or 'N:M'"),
    (lambda m: rk.prune(m, granularity="2:4", weights="bias"), "is not one"),
    (lambda m: rk.prune(m, sparsity=0.5, score="wanda"), "needs `calibration_data`"),
    (lambda m: rk.prune(m, sparsity=0.5, calibration_data=np.zeros((4, 8), "float32")), "needs `calibration_data`"),
    (lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=np.zeros((4, 3), "float32")),
     "calibration_data`: the model cannot be called on it"),
    (lambda m: rk.prune(m, sparsity=0.5, ranking="per_layer"), "argument `ranking`"),
    (lambda m: rk.prune(m, granularity="2:4", ranking="per_output"), "needs granularity='weight'"),
    (lambda m: rk.prune(m, sparsity=0.5, granularity="unit", score="wanda",
                        calibration_data=np.zeros((4, 8), "float32")), "granularity='unit' removes whole"),
    (lambda m: rk.shrink(m, np.zeros((4, 8), "float32"), np.zeros(4), granularity="2:4", sparsity=0.75),
     "sparsity"),
])
def test_bad_patterns_and_calibration_are_refused_and_change_nothing(call, match):
    model = tiny_mlp(units=(8, 4), inputs=8)
    model.compile("adam", "mse")
    before = [numpy(v) for v in model.weights]
    with pytest.raises(ValueError, match=match):
        call(model)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, numpy(new))


def test_wanda_scores_weights_by_their_inputs_norms_within_each_output():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="k"), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype("float32")
    x[:, 0] *= 50.0  # one loud input: its small weights matter
    x[:, 1] = 0.0  # one silent input: its large weights do not
    kernel = model.get_layer("k").kernel
    before = numpy(kernel)
    rk.prune(model, sparsity=0.5, layers="k", score="wanda", calibration_data=x, ranking="per_output")
    after = numpy(kernel)
    # The NumPy score from the same activations, and its per-output cut.
    score = np.abs(before) * np.sqrt((x.astype("float64") ** 2).sum(axis=0))[:, None]
    expected = np.zeros_like(before, dtype=bool)
    np.put_along_axis(expected, np.argsort(score, axis=0, kind="stable")[:4], True, axis=0)
    np.testing.assert_array_equal(after == 0, expected)
    assert (after[1] == 0).all() and (after[0] != 0).all()
    # Ranked globally: the lowest half of the same scores, wherever they are.
    kernel.assign(before)
    rk.prune(model, sparsity=0.5, layers="k", score="wanda", calibration_data=x)
    np.testing.assert_array_equal(numpy(kernel) == 0, score <= np.sort(score, axis=None)[23])


def test_wanda_reads_the_layers_inside_a_kerashub_encoder():
    keras_hub = pytest.importorskip("keras_hub")
    inputs = keras.Input((5, 8))
    encoder = keras_hub.layers.TransformerEncoder(intermediate_dim=16, num_heads=2)
    model = keras.Model(inputs, encoder(inputs))
    x = np.random.default_rng(0).normal(size=(32, 5, 8)).astype("float32")
    result = rk.prune(model, granularity="2:4", score="wanda", calibration_data=x,
                      layers=lambda layer: isinstance(layer, keras.layers.Dense))
    names = sorted(ref.path.split("/")[-1] for ref in result.refs)
    assert names == ["feedforward_intermediate_dense", "feedforward_output_dense"]
    for ref in result.refs:
        assert NM(2, 4).satisfied_by(numpy(ref.variable), 0)
    model(x)  # still callable: every layer's `call` is its own again
    assert "call" not in vars(result.refs[0].layer)
