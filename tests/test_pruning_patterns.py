"""N:M patterns and the one-shot Wanda score, on the pruning core
(`keras_regkit.pruning.cut`, `scores.Wanda`, `calibration`)."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.pruning import calibration
from keras_regkit.pruning.granularity import NM

from conftest import (assert_refused_and_unchanged, infinite_dataset, right_checks, row, run_with_fixtures, tiny_data,
                      tiny_mlp)


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
    (lambda m: rk.prune(m, granularity="two:four"), "'weight', 'unit', 'head', 'block' or 'N:M'"),
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


# -- calibration data: what reaches the model, and how much of it is read -------

def dict_input_model():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    merged = keras.layers.Concatenate()([keras.layers.Dense(8, name="da")(a), keras.layers.Dense(8, name="db")(b)])
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(2, name="out")(merged))


def dict_batches_with_targets(n=32, batch=8):
    rng = np.random.default_rng(0)
    inputs = {"a": rng.normal(size=(n, 4)).astype("float32"), "b": rng.normal(size=(n, 4)).astype("float32")}
    targets = rng.normal(size=(n, 2)).astype("float32")
    return inputs, [({k: v[i:i + batch] for k, v in inputs.items()}, targets[i:i + batch]) for i in range(0, n, batch)]


def test_inputs_targets_batches_reach_the_model_as_inputs_only():
    inputs, batches = dict_batches_with_targets()
    read = list(calibration.batches(iter(batches)))
    assert len(read) == 4 and all(isinstance(b, dict) and sorted(b) == ["a", "b"] for b in read)
    # And prune's scores are those of the inputs alone, as if given as arrays.
    model = dict_input_model()
    before = [numpy(v) for v in model.weights]
    rk.prune(model, sparsity=0.5, layers="d*", score="wanda", calibration_data=iter(batches))
    from_batches = [numpy(v) for v in model.weights]
    for variable, value in zip(model.weights, before):
        variable.assign(value)
    rk.prune(model, sparsity=0.5, layers="d*", score="wanda", calibration_data=inputs)
    for old, new in zip(from_batches, model.weights):
        np.testing.assert_array_equal(old, numpy(new))


def test_a_dataset_is_read_to_the_sample_cap_or_the_steps_given():
    def endless():
        while True:
            yield np.ones((8, 6), "float32"), np.zeros((8, 4), "float32")

    assert len(list(calibration.batches(endless()))) == calibration.CALIBRATION_SAMPLES // 8
    assert len(list(calibration.batches(endless(), steps=3))) == 3
    # Arrays are read whole, or `steps` batches of `batch_size`.
    x = np.ones((300, 6), "float32")
    assert [len(b) for b in calibration.batches(x)] == [128, 128, 44]
    assert [len(b) for b in calibration.batches(x, steps=2)] == [128, 128]
    assert [len(b) for b in calibration.batches(x, batch_size=100, steps=10)] == [100, 100, 100]


def right_a_dataset_that_repeats_forever_is_read_to_the_cap():
    x, _ = tiny_data()
    model = tiny_mlp(units=(8, 4))
    before = [numpy(v) for v in model.weights]
    from_dataset = rk.prune(model, sparsity=0.5, score="wanda", calibration_data=infinite_dataset())
    dataset_zeros = [numpy(v) == 0 for v in model.weights]
    for variable, value in zip(model.weights, before):
        variable.assign(value)
    # The dataset repeats `x`: its norms are those of `x` times a constant,
    # so the same entries go.
    rk.prune(model, sparsity=0.5, score="wanda", calibration_data=x)
    assert from_dataset.sparsity == 0.5
    for zeros, variable in zip(dataset_zeros, model.weights):
        np.testing.assert_array_equal(zeros, numpy(variable) == 0)


def right_calibration_steps_reads_that_many_batches():
    seen = []

    def counted():
        for batch in infinite_dataset():
            seen.append(batch)
            yield batch

    rk.prune(tiny_mlp(units=(8, 4)), sparsity=0.5, score="wanda", calibration_data=counted(), calibration_steps=5)
    assert len(seen) == 5


def right_integer_and_float64_calibration_data_score_as_float32_does():
    x = np.random.default_rng(0).integers(-3, 4, size=(64, 6))
    model = tiny_mlp(units=(8, 4))
    before = [numpy(v) for v in model.weights]
    results = []
    for data in (x.astype("float32"), x, x.astype("float64")):
        for variable, value in zip(model.weights, before):
            variable.assign(value)
        rk.prune(model, sparsity=0.5, score="wanda", calibration_data=data)
        results.append([numpy(v) == 0 for v in model.weights])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def right_a_silent_input_ties_its_scores_and_the_cut_is_still_exact():
    # Input 0 is always 0: its weights all score 0 (a tie), and the cut takes
    # exactly round(s * n), the earliest of the tied first.
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    x[:, 0] = 0.0
    model = tiny_mlp(units=(8, 4))
    result = rk.prune(model, sparsity=0.05, layers="hidden0", score="wanda", calibration_data=x)
    kernel = numpy(model.get_layer("hidden0").kernel)
    assert result.zeros == round(0.05 * 48) == 2
    assert (kernel[0, :2] == 0).all() and (kernel != 0).sum() == 46


BAD_INPUT = [
    # Non-finite calibration data: its inputs' norms would be NaN, and a NaN score is never cut.
    row("wanda-one-nan", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=one_bad(np.nan)),
        ValueError,
        "batch 1 (from sample 128) holds 1 NaN or inf entries, in 1 of its samples (the first: sample 150)"),
    row("wanda-one-inf", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=one_bad(-np.inf)),
        ValueError, "calibration_data`: batch 1"),
    row("wanda-all-nan", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                            calibration_data=np.full((64, 6), np.nan, "float32")),
        ValueError, "batch 0 (from sample 0) holds 384 NaN or inf entries"),
    row("wanda-nan-in-dataset", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                                   calibration_data=iter([(one_bad(np.nan, 8, (3, 2)), None)] * 3)),
        ValueError, "batch 0 (from sample 0) holds 1 NaN or inf entries, in 1 of its samples (the first: sample 3)"),
    row("wanda-nan-in-a-dict", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                                  calibration_data=iter([{"x": np.full((2, 6), np.nan)}])),
        ValueError, "NaN or inf"),
    row("wanda-overflows", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                              calibration_data=np.full((4, 6), 1e30, "float32")),
        ValueError, "the inputs of 'hidden0' reach NaN or inf"),
    # Not inputs at all.
    row("wanda-data-path", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data="x.npy"),
        TypeError, "Received: calibration_data='x.npy' of type str"),
    row("wanda-data-number", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=1.0),
        TypeError, "calibration_data=1.0 of type float"),
    row("wanda-data-nested-lists", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                                      calibration_data=[[0.5] * 6] * 4), TypeError, "of type list"),
    row("wanda-data-empty", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                               calibration_data=np.zeros((0, 6), "float32")),
        ValueError, "holds no samples"),
    row("wanda-data-empty-generator", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=iter([])),
        ValueError, "holds no samples"),
    row("wanda-data-wrong-input-name", lambda m: rk.prune(m, sparsity=0.5, score="wanda",
                                                          calibration_data={"nope": np.zeros((4, 6), "float32")}),
        ValueError, "the model cannot be called on it"),
    # How much of it to read.
    row("wanda-steps-zero", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=np.ones((4, 6)),
                                               calibration_steps=0), ValueError, "calibration_steps=0"),
    row("wanda-steps-float", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=np.ones((4, 6)),
                                                calibration_steps=2.5), TypeError, "calibration_steps=2.5"),
    row("wanda-steps-bool", lambda m: rk.prune(m, sparsity=0.5, score="wanda", calibration_data=np.ones((4, 6)),
                                               calibration_steps=True), TypeError, "calibration_steps=True"),
    row("steps-without-wanda", lambda m: rk.prune(m, sparsity=0.5, calibration_steps=3), ValueError,
        "calibration_steps=3, score='magnitude'"),
    # N:M strings a user might type.
    row("nm-n-equals-m", lambda m: rk.prune(m, granularity="2:2"), ValueError,
        "N must be at least 1 and below M (keep N of every M). Received: granularity='2:2'"),
    row("nm-zero-n", lambda m: rk.prune(m, granularity="0:2"), ValueError, "Received: granularity='0:2'"),
    row("nm-zero-m", lambda m: rk.prune(m, granularity="0:0"), ValueError, "Received: granularity='0:0'"),
    row("nm-negative", lambda m: rk.prune(m, granularity="-1:2"), ValueError, "Received: granularity='-1:2'"),
    row("nm-spaces", lambda m: rk.prune(m, granularity="1 : 2"), ValueError, "Received: granularity='1 : 2'"),
    row("nm-three-parts", lambda m: rk.prune(m, granularity="1:2:4"), ValueError, "Received: granularity='1:2:4'"),
    row("nm-slash", lambda m: rk.prune(m, granularity="1/2"), ValueError, "Received: granularity='1/2'"),
    row("nm-tuple", lambda m: rk.prune(m, granularity=(1, 2)), ValueError, "Received: granularity=(1, 2)"),
    row("nm-float", lambda m: rk.prune(m, granularity=0.5), ValueError, "Received: granularity=0.5"),
    row("nm-m-not-dividing", lambda m: rk.prune(m, granularity="1:4"), ValueError,
        "'hidden0' has 6 inputs"),
    row("nm-sparsity-past-the-pattern", lambda m: rk.prune(m, granularity="1:2", sparsity=0.75), ValueError,
        "sparsity"),
    row("nm-per-output", lambda m: rk.prune(m, granularity="1:2", ranking="per_output"), ValueError,
        "needs granularity='weight'"),
]


def one_bad(value, n=300, at=(150, 2)):
    x = np.random.default_rng(0).normal(size=(n, 6)).astype("float32")
    x[at] = value
    return x


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)


RIGHT = right_checks(
    right_a_dataset_that_repeats_forever_is_read_to_the_cap,
    right_calibration_steps_reads_that_many_batches,
    right_integer_and_float64_calibration_data_score_as_float32_does,
    right_a_silent_input_ties_its_scores_and_the_cut_is_still_exact,
)


@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)
