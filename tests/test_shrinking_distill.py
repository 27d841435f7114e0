"""Distillation from the starting model (`shrinking/distill.py`): the
teacher term per kind of output, zero at the start, added to the training
loss only, a different shrink end to end, the model's own `compute_loss`
back after the shrink (also when `fit` ends by an exception), and the bad
values of `distill` refused."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.shrinking import ShrinkPhase, distill
from tests.conftest import assert_refused_and_unchanged, row

X = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
LABELS = (X[:, 0] > 0).astype("int32")

# (loss, last activation, targets, the kind the teacher term compares)
LOSSES = {
    "logits": (keras.losses.SparseCategoricalCrossentropy(from_logits=True), None, LABELS),
    "probabilities": ("categorical_crossentropy", "softmax", np.eye(3, dtype="float32")[LABELS]),
    "binary_logits": (keras.losses.BinaryCrossentropy(from_logits=True), None, np.eye(3, dtype="float32")[LABELS]),
    "binary_probabilities": (keras.losses.binary_crossentropy, "sigmoid", np.eye(3, dtype="float32")[LABELS]),
    "values": ("mse", None, X[:, :3]),
}


class Subclassed(keras.Model):
    def __init__(self, activation=None):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(3, activation=activation)

    def call(self, x):
        return self.out(self.hidden(x))


def build(kind="sequential", activation=None):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                 keras.layers.Dense(3, activation=activation)])
    if kind == "functional":
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, activation=activation)(hidden))
    model = Subclassed(activation)
    model(X[:1])
    return model


def compiled(loss_name, kind="sequential"):
    loss, activation, targets = LOSSES[loss_name]
    model = build(kind, activation)
    model.compile(keras.optimizers.Adam(1e-2), loss)
    return model, targets


def losses(model, targets, training=True):
    """The model's `compute_loss` on the whole batch, as the train step calls it."""
    return float(keras.ops.convert_to_numpy(
        model.compute_loss(x=X, y=targets, y_pred=model(X), sample_weight=None, training=training)))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def expected_term(kind, student, teacher):
    """The teacher term, in NumPy, from its definition."""
    if kind == "logits":
        student, teacher = softmax(student), softmax(teacher)
    if kind in ("logits", "probabilities"):
        return np.mean(np.sum(teacher * np.log(teacher / student), -1))
    if kind == "binary_logits":
        student, teacher = sigmoid(student), sigmoid(teacher)
    if kind in ("binary_logits", "binary_probabilities"):
        return np.mean(teacher * np.log(teacher / student) + (1 - teacher) * np.log((1 - teacher) / (1 - student)))
    return np.mean((student - teacher) ** 2)


@pytest.mark.parametrize("model_kind", ["sequential", "functional", "subclassed"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_the_teacher_term_is_zero_at_the_start_and_its_divergence_once_the_model_moved(loss_name, model_kind):
    model, targets = compiled(loss_name, model_kind)
    assert distill.output_kind(model.loss) == loss_name
    own = losses(model, targets)
    teacher = keras.ops.convert_to_numpy(model(X)).astype("float64")
    term = distill.Distillation(0.5)
    term.attach(model)
    assert losses(model, targets) == pytest.approx(own, rel=1e-6)  # student == teacher
    # Moved: the loss is the model's own plus 0.5 times the divergence.
    model.layers[-1].kernel.assign(keras.ops.convert_to_numpy(model.layers[-1].kernel) * 1.5 + 0.1)
    student = keras.ops.convert_to_numpy(model(X)).astype("float64")
    term.detach()
    moved_own = losses(model, targets)
    term.attach(model)  # a new teacher: the model as it is now
    assert losses(model, targets) == pytest.approx(moved_own, rel=1e-6)
    term.detach()
    model.layers[-1].kernel.assign((keras.ops.convert_to_numpy(model.layers[-1].kernel) - 0.1) / 1.5)
    term.attach(model)  # the first teacher again
    model.layers[-1].kernel.assign(keras.ops.convert_to_numpy(model.layers[-1].kernel) * 1.5 + 0.1)
    gap = expected_term(loss_name, student, teacher)
    assert gap > 1e-3
    assert losses(model, targets) == pytest.approx(moved_own + 0.5 * gap, rel=1e-4)
    # Evaluation (`val_loss`) stays the model's own.
    assert losses(model, targets, training=False) == pytest.approx(moved_own, rel=1e-6)
    term.detach()


def test_a_shrink_with_distillation_trains_differently_and_gives_the_model_its_own_loss_back():
    ends, logged = [], []
    for weight in (False, True):
        model, targets = compiled("logits")
        model.fit(X, targets, epochs=5, verbose=0)
        own_compute_loss, own_loss = model.compute_loss, model.loss
        keras.utils.set_random_seed(1)
        history = keras.callbacks.History()
        result = rk.shrink(model, X, targets, sparsity=0.8, epochs=3, batch_size=16, distill=weight,
                           callbacks=[history])
        assert result.sparsity == pytest.approx(0.8, abs=0.02)
        ends.append(model.get_weights())
        logged.append(history.history["loss"])
        # The compile state is the user's again: no wrapper on the instance,
        # the same loss, and `fit`'s next loss is the model's own.
        assert "compute_loss" not in model.__dict__ and model.loss is own_loss
        assert model.compute_loss == own_compute_loss
        before = losses(model, targets)
        assert model.evaluate(X, targets, verbose=0, batch_size=64) == pytest.approx(before, rel=1e-4)
    assert any(not np.allclose(a, b) for a, b in zip(*ends))
    assert logged[0][0] != pytest.approx(logged[1][0], rel=1e-3)


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_starting_predictions_beside_the_targets_give_the_term_the_teacher_gives(loss_name, monkeypatch):
    model, targets = compiled(loss_name, "functional")
    packed = {distill.LABELS_KEY: targets, distill.TEACHER_KEY: model.predict(X, verbose=0)}
    term = distill.Distillation(0.5)
    term.attach(model)  # the teacher: the model as the predictions were made
    model.layers[-1].kernel.assign(keras.ops.convert_to_numpy(model.layers[-1].kernel) * 1.5 + 0.1)
    in_step = losses(model, targets)
    monkeypatch.setattr(model, "stateless_call", lambda *a, **k: pytest.fail("the teacher ran in the step"))
    assert losses(model, packed) == pytest.approx(in_step, rel=1e-5)
    # The model's own loss and metrics read the targets alone.
    assert losses(model, packed, training=False) == pytest.approx(losses(model, targets, training=False), rel=1e-6)
    term.detach()
    assert "compute_metrics" not in model.__dict__


def test_the_compiled_metrics_read_the_targets_beside_which_the_predictions_ride():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = {"a": keras.layers.Dense(2, name="a")(hidden), "b": keras.layers.Dense(1, name="b")(hidden)}
    model = keras.Model(inputs, outputs)
    model.compile("adam", {"a": "mse", "b": "mse"}, metrics={"a": ["mae"], "b": ["mae"]})
    targets = {"a": X[:, :2], "b": X[:, 2:3] * 3.0}
    model.fit(X, targets, epochs=1, verbose=0)
    packed = {distill.LABELS_KEY: targets, distill.TEACHER_KEY: model.predict(X, verbose=0)}
    y_pred = model(X)

    def metrics(y):
        model.reset_metrics()
        return {k: float(keras.ops.convert_to_numpy(v)) for k, v in model.compute_metrics(X, y, y_pred, None).items()}

    own = metrics(targets)
    term = distill.Distillation(1.0)
    term.attach(model)
    assert metrics(packed) == pytest.approx(own)
    term.detach()


def test_attaching_the_teacher_retraces_the_train_step_alone_and_detaching_both(monkeypatch):
    model, targets = compiled("logits")
    model.fit(X, targets, epochs=1, verbose=0, validation_data=(X, targets))
    rebuilt = []
    for name in ("make_train_function", "make_test_function"):
        make = getattr(model, name)
        monkeypatch.setattr(model, name, lambda force=False, name=name, make=make: rebuilt.append(name) or make(force))
    term = distill.Distillation(1.0)
    term.attach(model)  # the test step's loss and metrics are the model's own either way
    assert rebuilt == ["make_train_function"]
    term.detach()  # nothing of the teacher stays in a traced step
    assert rebuilt[1:] == ["make_train_function", "make_test_function"]


def test_shrink_computes_the_starting_predictions_once_and_ends_where_the_teacher_in_the_step_ends(monkeypatch):
    ends = []
    for cached in (False, True):
        model, targets = compiled("logits")
        model.compile(keras.optimizers.Adam(1e-2), model.loss, metrics=["accuracy"])
        model.fit(X, targets, epochs=5, verbose=0)
        found = []  # per traced (TensorFlow, JAX) or run (PyTorch) step: the predictions were beside the targets
        with monkeypatch.context() as patch:
            if not cached:  # made, as `predict` draws from the backend's random state (the batches' order), not used
                made = distill.with_teacher_predictions
                patch.setattr(distill, "with_teacher_predictions", lambda *a, **k: made(*a, **k) and None)
            unpack = distill.unpacked
            patch.setattr(distill, "unpacked", lambda y, w=None: found.append(unpack(y)[1] is not None) or unpack(y, w))
            keras.utils.set_random_seed(1)
            history = keras.callbacks.History()
            rk.shrink(model, X, targets, sparsity=0.8, epochs=3, batch_size=16, distill=True, callbacks=[history],
                      sample_weight=np.linspace(0.2, 2.0, len(X)).astype("float32"))
        assert found and set(found) == {cached}
        assert 0.0 <= history.history["accuracy"][-1] <= 1.0  # the metric read the targets alone
        ends.append(model.get_weights())
    for a, b in zip(*ends):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_shrink_that_saves_its_state_keeps_the_teacher_in_the_step(monkeypatch, tmp_path):
    # A resumed run re-attaches the teacher from the saved starting weights: no predictions made before it.
    model, targets = compiled("logits")
    model.fit(X, targets, epochs=2, verbose=0)
    found = []
    unpack = distill.unpacked
    monkeypatch.setattr(distill, "unpacked", lambda y, w=None: found.append(unpack(y)[1] is not None) or unpack(y, w))
    rk.shrink(model, X, targets, sparsity=0.8, epochs=2, batch_size=16, distill=True, backup_dir=str(tmp_path))
    assert found and not any(found)


class OwnStep(keras.Sequential):
    def train_step(self, *args, **kwargs):
        return super().train_step(*args, **kwargs)


class OwnPredictStep(keras.Sequential):
    def predict_step(self, data):
        return keras.ops.softmax(super().predict_step(data))


def test_with_the_predictions_given_a_batch_without_them_is_an_evaluation(monkeypatch):
    model, targets = compiled("logits")
    term = distill.Distillation(1.0)
    term.predictions_given = True
    term.attach(model)
    monkeypatch.setattr(model, "stateless_call", lambda *a, **k: pytest.fail("the teacher ran in the step"))
    model.layers[-1].kernel.assign(keras.ops.convert_to_numpy(model.layers[-1].kernel) * 1.5 + 0.1)
    own = losses(model, targets, training=False)
    packed = {distill.LABELS_KEY: targets, distill.TEACHER_KEY: np.zeros((len(X), 3), "float32")}
    assert losses(model, packed) > own + 1e-3  # the term, from the given predictions
    # Keras passes no `training` to a `compute_loss` of the user's that takes none, in the test step too:
    # without the predictions, only the model's own loss (it is not a training batch).
    assert losses(model, targets) == pytest.approx(own, rel=1e-6)
    term.detach()


@pytest.mark.parametrize("case", ["arrays", "a dataset", "no targets", "own train step", "predictions larger than x",
                                  "loss not built", "weights per output", "weights per time step", "a distribution",
                                  "own predict step", "no symbolic call"])
def test_the_starting_predictions_ride_beside_the_targets_only_where_they_can(case, monkeypatch):
    if case == "a distribution":
        if keras.backend.backend() != "jax":
            pytest.skip("Keras' distribution API runs under JAX only")
        monkeypatch.setattr(keras.distribution, "distribution", lambda: keras.distribution.DataParallel())
    x, y = X, LABELS
    kind = {"own train step": OwnStep, "own predict step": OwnPredictStep}.get(case, keras.Sequential)
    model = kind([keras.Input((4,)), keras.layers.Dense(64 if case == "predictions larger than x" else 3)])
    if case == "no symbolic call":  # string inputs, a `call` that needs values
        monkeypatch.setattr(model, "compute_output_spec", lambda *a, **k: (_ for _ in ()).throw(ValueError("str64")))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if case != "loss not built":
        model.fit(x, y, epochs=1, verbose=0)
    if case == "a dataset":
        import tensorflow as tf

        x = tf.data.Dataset.from_tensor_slices((X, LABELS)).batch(16)
        y = None
    if case == "no targets":
        y = None
    weights = {"weights per output": [np.ones(len(X), "float32")],
               "weights per time step": np.ones((len(X), 2), "float32")}.get(case)
    packed = distill.with_teacher_predictions(model, x, y, weights)
    if case != "arrays":
        assert packed is None
        return
    assert packed[distill.LABELS_KEY] is y
    np.testing.assert_allclose(packed[distill.TEACHER_KEY], keras.ops.convert_to_numpy(model(X)), rtol=1e-5, atol=1e-6)


class Interrupts(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise KeyboardInterrupt


def test_an_interrupted_shrink_puts_back_a_compute_loss_of_the_users_own():
    model, targets = compiled("values")
    model.fit(X, targets, epochs=2, verbose=0)

    def users_own(x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.ops.abs(y - y_pred))

    model.compute_loss = users_own
    with pytest.raises(KeyboardInterrupt):
        rk.shrink(model, X, targets, sparsity=0.5, epochs=2, batch_size=16, distill=2.0, callbacks=[Interrupts()])
    assert model.__dict__["compute_loss"] is users_own


@pytest.mark.parametrize("value, weight", [(True, distill.DEFAULT_WEIGHT), (False, 0.0), (None, 0.0), (3, 3.0)])
def test_distill_takes_true_false_or_a_weight(value, weight):
    assert ShrinkPhase(start_epoch=0, sparsity=0.5, distill=value).distill.weight == weight


@pytest.mark.parametrize("how, weight", [
    (dict(sparsity=distill.AUTO_FROM), distill.DEFAULT_WEIGHT),  # where the benchmarks found it helps
    (dict(sparsity=0.99), distill.DEFAULT_WEIGHT),
    (dict(sparsity=0.96), 0.0),
    (dict(tolerance=0.01), 0.0),  # a check may fail on the pull towards the start
    (dict(policy=rk.shrinking.SparsityTarget(0.98)), distill.DEFAULT_WEIGHT),
    (dict(sparsity=0.98, int8=True, representative_data=X), 0.0),
])
def test_the_default_distills_a_sparsity_shrink_that_aims_high(how, weight):
    assert ShrinkPhase(start_epoch=0, validation_data=(X, LABELS), **how).distill.weight == weight


BAD_INPUT = [
    row("a string", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, distill="yes"), TypeError,
        "distill='yes'"),
    row("negative", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, distill=-1.0), ValueError, "distill=-1.0"),
    row("zero", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, distill=0), ValueError, "distill=0"),
    row("nan", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, distill=float("nan")), ValueError,
        "distill=nan"),
    row("a list", lambda m: ShrinkPhase(start_epoch=0, sparsity=0.5, distill=[1.0]), TypeError, "distill=[1.0]"),
    row("through shrink", lambda m: rk.shrink(m, *tiny_regression(), sparsity=0.5, distill="on"), TypeError,
        "`distill`"),
]


def tiny_regression():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input(call, error, fragment, prepare):
    def compiled_first(model):
        model.compile("adam", "mse")
        if prepare is not None:
            prepare(model)

    assert_refused_and_unchanged(call, error, fragment, compiled_first)


def test_the_starting_predictions_of_a_model_with_named_outputs_keep_their_structure():
    x = np.concatenate([X, X], axis=1)  # wider than the outputs: they ride beside the targets
    inputs = keras.Input((8,))
    model = keras.Model(inputs, {"a": keras.layers.Dense(3, name="a")(inputs),
                                 "b": keras.layers.Dense(2, name="b")(inputs)})
    model.compile("adam", {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"})
    targets = {"a": LABELS, "b": np.zeros((len(X), 2), "float32")}
    model.fit(x, targets, epochs=1, verbose=0)
    packed = distill.with_teacher_predictions(model, x, targets, batch_size=7)  # batches of 7: a short last one
    teacher, expected = packed[distill.TEACHER_KEY], model(x)
    assert set(teacher) == {"a", "b"}
    for name in ("a", "b"):
        assert teacher[name].shape == (len(X), {"a": 3, "b": 2}[name])
        np.testing.assert_allclose(teacher[name], keras.ops.convert_to_numpy(expected[name]), rtol=1e-5, atol=1e-6)
