"""The shrink takes every data shape `fit` takes, with the meaning `fit` gives
it: lists and dicts of inputs and targets, multi-output models, weighted
validation tuples, datasets, generators, `PyDataset`s and data that repeats
forever (`shrinking/data.py`, which also samples the guards' inputs)."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import ShrinkPhase
from keras_regkit.shrinking import AgreementGuard, Plateau, SparsityTarget, data

tf = pytest.importorskip("tensorflow", reason="tf.data is how most users feed fit; installed with the package")

N = 256


def two_inputs(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, 6)).astype("float32")
    b = rng.normal(size=(N, 3)).astype("float32")
    y = (a[:, 0] + b[:, 0] > 0).astype("int32")
    return a, b, y


def two_input_model():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Dense(2, name="out")(hidden))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    a_, b_, y = two_inputs()
    model.fit([a_, b_], y, epochs=10, batch_size=32, verbose=0)
    return model


def two_output_model():
    """A class head `kind`, a second class head `sign` and a regression head
    `size`, as a dict of outputs."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    model = keras.Model(x, {
        "kind": keras.layers.Dense(2, name="kind")(hidden),
        "sign": keras.layers.Dense(3, name="sign")(hidden),
        "size": keras.layers.Dense(1, name="size")(hidden),
    })
    classes = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-2), {"kind": classes, "sign": classes, "size": "mse"},
                  metrics={"kind": ["accuracy"], "sign": ["accuracy"]})
    x_, y = two_output_data()
    model.fit(x_, y, epochs=10, batch_size=32, verbose=0)
    return model


def two_output_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 6)).astype("float32")
    return x, {"kind": (x[:, 0] > 0).astype("int32"), "sign": np.digitize(x[:, 1], [-0.5, 0.5]).astype("int32"),
               "size": x[:, 2:3]}


def accuracy_of(model, x, labels):
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), axis=-1) == labels))


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_two_input_model_with_lists_or_dicts_of_inputs(as_dict):
    model = two_input_model()
    a, b, y = two_inputs()
    av, bv, yv = two_inputs(seed=1)
    x, xv = ([a, b], [av, bv]) if not as_dict else ({"a": a, "b": b}, {"a": av, "b": bv})
    baseline = model.evaluate(xv, yv, verbose=0, return_dict=True)["accuracy"]
    result = rk.shrink(model, x, y, sparsity=0.7, validation_data=(xv, yv), epochs=2, batch_size=32)
    assert result.baseline == pytest.approx(baseline, abs=1e-6)
    assert result.final == pytest.approx(model.evaluate(xv, yv, verbose=0, return_dict=True)["accuracy"], abs=1e-6)
    assert result.sparsity == pytest.approx(0.7, abs=1 / 300)


def test_multi_output_model_reports_the_weighted_accuracy_of_each_class_output():
    model = two_output_model()
    x, y = two_output_data()
    xv, yv = two_output_data(seed=1)
    weights = np.where(np.arange(N) % 3 == 0, 4.0, 0.5).astype("float32")
    model.compile(model.optimizer, model.loss, weighted_metrics={"kind": ["accuracy"], "sign": ["accuracy"]})
    before = model.evaluate(xv, yv, sample_weight=weights, verbose=0, return_dict=True)
    result = rk.shrink(model, x, y, sparsity=0.6, validation_data=(xv, yv, weights), epochs=2, batch_size=32)
    # The mean of the two class heads' weighted accuracies, as fit weighs
    # them; the regression head has none.
    assert result.baseline == pytest.approx((before["kind_accuracy"] + before["sign_accuracy"]) / 2, abs=1e-6)
    after = model.evaluate(xv, yv, sample_weight=weights, verbose=0, return_dict=True)
    assert result.final == pytest.approx((after["kind_accuracy"] + after["sign_accuracy"]) / 2, abs=1e-6)
    assert result.sparsity == pytest.approx(0.6, abs=1 / 300)


def test_guard_of_a_multi_output_model_watches_the_class_output_that_changed_most():
    model = two_output_model()
    x, _ = two_output_data()
    guard = AgreementGuard(0.05)
    guard.start(model, x)
    assert guard.reference.shape == (N, 2)  # kind and sign; not the regression head
    sign = model.get_layer("sign")
    kind_before = np.argmax(keras.ops.convert_to_numpy(model(x)["kind"]), axis=-1)
    sign.bias.assign(keras.ops.convert_to_numpy(sign.bias) + np.array([0.0, 0.0, 3.0], "float32"))
    changed = np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)["sign"]), axis=-1) != guard.reference[:, 1])
    assert changed > 0.1
    np.testing.assert_array_equal(np.argmax(keras.ops.convert_to_numpy(model(x)["kind"]), axis=-1), kind_before)
    assert guard.disagreement(model) == pytest.approx(changed)
    assert not guard.holds(model)


def test_patience_waits_on_a_multi_output_metric_by_its_fit_name():
    model = two_output_model()
    x, y = two_output_data()
    xv, yv = two_output_data(seed=1)
    model.compile(keras.optimizers.SGD(0.0), model.loss, metrics={"kind": ["accuracy"]})
    phase = ShrinkPhase(start_epoch=Plateau(patience=2, monitor="val_kind_accuracy"),
                        policy=SparsityTarget(0.5, learning_rate=None, score="magnitude"))
    model.fit(x, y, validation_data=(xv, yv), epochs=5, batch_size=64, verbose=0, callbacks=[phase])
    # A learning rate of 0: no gain after the first epoch, so it starts after the third.
    assert phase.result.started_at_epoch == 3


def test_tolerance_mode_with_a_multi_output_model_holds_every_class_output():
    model = two_output_model()
    x, y = two_output_data()
    xv, yv = two_output_data(seed=1)
    def hits():
        outputs = model(xv)
        return {name: (np.argmax(keras.ops.convert_to_numpy(outputs[name]), -1) == yv[name]).astype(float)
                for name in outputs if name != "size"}

    start = hits()
    result = rk.shrink(model, x, y, tolerance=0.05, validation_data=(xv, yv), epochs=4, batch_size=32,
                       cut_every=2)
    assert result.sparsity > 0.2
    # Each class output keeps its accuracy within the tolerance, beyond one
    # standard error of its paired change (the check's slack); the reported
    # figure is their mean.
    end = hits()
    for name in start:
        change = start[name] - end[name]
        noise = np.sqrt(np.sum(change**2)) / len(change)
        assert change.mean() - noise <= 0.05 + 1e-9, name
    assert result.final == pytest.approx(np.mean([h.mean() for h in end.values()]))


class Batches(keras.utils.PyDataset):
    def __init__(self, a, b, y, batch_size=32):
        super().__init__()
        self.a, self.b, self.y, self.batch_size = a, b, y, batch_size

    def __len__(self):
        return len(self.y) // self.batch_size

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return (self.a[part], self.b[part]), self.y[part]


def test_pydataset_and_tf_data_of_two_inputs():
    model = two_input_model()
    a, b, y = two_inputs()
    av, bv, yv = two_inputs(seed=1)
    baseline = accuracy_of(model, [av, bv], yv)
    result = rk.shrink(model, Batches(a, b, y), sparsity=0.5, validation_data=Batches(av, bv, yv), epochs=2)
    assert result.baseline == pytest.approx(baseline)
    assert result.steps == 2 * len(Batches(a, b, y))

    model = two_input_model()
    validation = tf.data.Dataset.from_tensor_slices(((av, bv), yv)).batch(32)
    train = tf.data.Dataset.from_tensor_slices(((a, b), y)).batch(32)
    guard = AgreementGuard(0.05)
    result = rk.shrink(model, train, tolerance=0.05, validation_data=validation, epochs=2, guard=guard)
    assert result.baseline == pytest.approx(baseline)
    np.testing.assert_array_equal(guard.inputs[0], a)  # the structure of the inputs is kept


def test_data_that_repeats_forever_needs_its_steps_and_reads_only_those():
    model = two_input_model()
    a, b, y = two_inputs()
    av, bv, yv = two_inputs(seed=1)
    train = tf.data.Dataset.from_tensor_slices(((a, b), y)).batch(32).repeat()
    validation = tf.data.Dataset.from_tensor_slices(((av, bv), yv)).batch(32).repeat()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        rk.shrink(model, train, sparsity=0.5, epochs=2)  # fit would never end
    with pytest.raises(ValueError, match="validation_steps"):
        rk.shrink(model, train, sparsity=0.5, validation_data=validation, steps_per_epoch=4, epochs=2)
    # The first 3 validation batches, as fit reads them with validation_steps=3.
    expected = accuracy_of(model, [av[:96], bv[:96]], yv[:96])
    result = rk.shrink(model, train, sparsity=0.5, validation_data=validation, steps_per_epoch=4,
                       validation_steps=3, epochs=2)
    assert result.baseline == pytest.approx(expected)
    assert result.steps == 8


def test_data_that_can_be_read_only_once_is_refused_not_used_up():
    model = two_input_model()
    a, b, y = two_inputs()

    def batches():
        for i in range(0, N, 32):
            yield (a[i:i + 32], b[i:i + 32]), y[i:i + 32]

    with pytest.raises(ValueError, match="validation_data.*read only once"):
        rk.shrink(model, [a, b], y, sparsity=0.5, validation_data=batches())
    validation = batches()
    with pytest.raises(ValueError, match="reference inputs from `x`.*read only once"):
        rk.shrink(model, batches(), validation_data=validation, tolerance=0.01, guard=rk.shrinking.AgreementGuard(0.1))
    assert next(validation)[1].shape == (32,)  # untouched by the refused call
    # The sparsity mode reads the training data only through fit.
    result = rk.shrink(model, batches(), sparsity=0.5, epochs=1, steps_per_epoch=N // 32)
    assert result.steps == N // 32 and result.sparsity == pytest.approx(0.5, abs=1 / 300)


def test_monitor_and_scheduler_under_fit_with_a_dict_of_inputs():
    model = two_input_model()
    a, b, y = two_inputs()
    strength = keras.optimizers.schedules.PolynomialDecay(1e-2, 8, 1e-3)
    rk.apply_regularizers(model, {"hidden": rk.regularizers.L1(strength)})
    history = model.fit({"a": a, "b": b}, y, epochs=1, batch_size=32, verbose=0, callbacks=[
        rk.callbacks.RegularizationScheduler(update_freq="epoch"), rk.callbacks.SparsityMonitor()])
    assert "sparsity" in history.history
    assert history.history["reg_loss"][0] > 0


def test_sample_inputs_keeps_the_structure_of_list_and_dict_inputs():
    x = {"a": np.arange(10.0)[:, None], "b": np.arange(10.0)[:, None] * 2}
    taken = data.sample_inputs(x, 4)
    assert set(taken) == {"a", "b"} and taken["a"].shape == (4, 1)
    np.testing.assert_array_equal(taken["b"], taken["a"] * 2)  # rows stay paired
    listed = data.sample_inputs([np.arange(10.0), np.arange(10.0)], 20)
    assert len(listed) == 2 and listed[0].shape == (10,)


def test_non_finite_counts_nan_and_inf_in_floating_inputs_only():
    import ml_dtypes

    from keras_regkit.shrinking.data import non_finite

    assert non_finite(np.array([1.0, np.nan, np.inf], "float32")) == 2
    assert non_finite(np.array([1.0, np.nan], ml_dtypes.bfloat16)) == 1  # no NumPy floating type
    assert non_finite({"tokens": np.array([1, 2]), "values": [np.array([-np.inf], "float16")]}) == 1
    assert non_finite(np.array(["nan"])) == 0


def test_under_tensorflow_the_shrink_reads_arrays_as_fits_own_dataset_of_them_untuned():
    # TensorFlow waits at each epoch's start for tf.data's tuning thread
    # (up to 2.5 s an epoch): the shrink's fit reads arrays as the dataset
    # fit makes of them, tuning off. Elsewhere nothing changes.
    from keras_regkit._keras import data as fence

    x, y = np.arange(10, dtype="float32")[:, None], np.arange(10) * 10
    weight = np.arange(10, dtype="float32") / 10
    given = {"x": x, "y": y, "sample_weight": weight, "batch_size": 4, "steps_per_epoch": None}
    keras.utils.set_random_seed(0)
    inputs = data.fit_inputs(x, y, weight, 4, None)
    if keras.backend.backend() != "tensorflow":
        assert inputs == given
        return
    assert inputs.keys() == {"x", "shuffle", "validation_batch_size"}
    assert inputs["shuffle"] is False  # a dataset comes shuffled: fit would warn
    assert inputs["validation_batch_size"] == 4  # fit validated in batches of `batch_size`
    dataset = inputs["x"]
    assert dataset.options().autotune.enabled is False
    assert int(dataset.cardinality()) == 3  # fit counts an epoch's steps as for the arrays
    keras.utils.set_random_seed(0)
    fits_own, _ = fence.array_dataset(x, y, weight, 4)

    def epoch(batches):  # one iterator: one epoch, as fit makes them
        return [tuple(np.asarray(part).tolist() for part in batch) for batch in batches]

    first = epoch(dataset)
    assert first == epoch(fits_own)  # fit's batches, shuffled as fit shuffles them (across batches)
    assert [len(b[0]) for b in first] == [4, 4, 2]
    seen = [int(v[0]) for b in first for v in b[0]]
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    assert [v for b in first for v in b[1]] == [10 * i for i in seen]  # targets with their inputs
    np.testing.assert_allclose([v for b in first for v in b[2]], np.array(seen) / 10)  # and sample weights
    # The user's steps, a dataset, or no sample at all: as given, to fit.
    assert data.fit_inputs(x, y, None, 4, 2) == dict(given, sample_weight=None, steps_per_epoch=2)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert data.fit_inputs(dataset, None, None, None, None)["x"] is dataset
    empty = np.zeros((0, 1), "float32")
    assert data.fit_inputs(empty, empty, None, 4, None)["x"] is empty


def test_shrink_gives_fit_the_inputs_fit_inputs_makes(monkeypatch):
    model = two_input_model()
    a, b, y = two_inputs()
    received = {}
    fit = model.fit

    def recorded_fit(**kwargs):
        received.update(kwargs)
        return fit(**kwargs)

    monkeypatch.setattr(model, "fit", recorded_fit)
    result = rk.shrink(model, [a, b], y, sparsity=0.5, epochs=2, batch_size=64)
    expected = data.fit_inputs([a, b], y, None, 64, None)
    assert received.keys() >= expected.keys()
    if keras.backend.backend() == "tensorflow":
        assert isinstance(received["x"], tf.data.Dataset) and received["validation_batch_size"] == 64
    else:
        assert received["x"][0] is a and received["batch_size"] == 64
    assert result.steps == 2 * (N // 64)  # every batch of each epoch, as fit reads the arrays
