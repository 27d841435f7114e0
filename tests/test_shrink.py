import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import ShrinkPhase
from keras_regkit.regularizers import L2, Combined


def classification_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def trained_classifier(**dense_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation="relu", name="hidden", **dense_kwargs),
        keras.layers.Dense(2, name="out"),
    ])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = classification_data()
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model


def accuracy(model, x, y):
    return model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]


def kernel_zeros(model):
    return rk.sparsity_report(model).total.sparsity


def test_shrink_makes_exact_zeros_and_holds_the_tolerance():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    before = accuracy(model, xv, yv)
    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=6, monitor="val_accuracy",
                       tolerance=0.02, strength=1e-3, batch_size=32)
    assert result.outcome == "pruned" and result.threshold is not None
    assert result.baseline == pytest.approx(before)
    assert accuracy(model, xv, yv) >= before - 0.02 - 1e-6
    assert result.final == pytest.approx(accuracy(model, xv, yv))
    # The task needs 2 of 8 inputs: most of the first layer can go.
    assert kernel_zeros(model) == pytest.approx(result.sparsity) and result.sparsity > 0.5
    assert result.epochs_used == 6
    # The temporary penalty is gone; nothing is held any more.
    assert model.losses == []
    assert all(getattr(v, "constraint", None) is None for v in model.weights)


def test_shrink_penalty_changes_training():
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    norms = {}
    for strength in (1e-9, 3e-3):
        model = trained_classifier()
        rk.shrink(model, x, y, validation_data=(xv, yv), epochs=3, monitor="val_accuracy", tolerance=1.0,
                  strength=strength, prune=False, batch_size=32)
        norms[strength] = rk.sparsity_report(model).total.l1
    assert norms[3e-3] < 0.8 * norms[1e-9]


def test_user_penalties_are_combined_during_and_restored_after():
    model = trained_classifier(kernel_regularizer=L2(1e-4))
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.get_layer("hidden").kernel.regularizer)

    rk.shrink(model, x, y, validation_data=(xv, yv), epochs=2, monitor="val_accuracy", tolerance=0.05, callbacks=[Spy()], batch_size=32)
    assert isinstance(seen[0], Combined) and isinstance(seen[0].regularizers[0], L2)
    assert isinstance(model.get_layer("hidden").kernel.regularizer, L2)
    assert model.get_layer("hidden").get_config()["kernel_regularizer"]["class_name"] == "L2"


def test_callback_in_fit_with_validation_split_and_fine_tune():
    model = trained_classifier()
    x, y = classification_data(n=512)
    phase = ShrinkPhase(start_epoch=2, monitor="val_accuracy", tolerance=0.03, strength=1e-3, fine_tune_epochs=2)
    with phase:
        model.fit(x, y, epochs=8, batch_size=32, validation_split=0.25, verbose=0, callbacks=[phase])
    result = phase.result
    assert result.started_at_epoch == 2 and result.epochs_used == 4
    assert result.outcome in ("pruned", "fine-tuned") and result.sparsity > 0.3
    assert all(getattr(v, "constraint", None) is None for v in model.weights)


def test_patience_starts_the_phase_at_a_plateau():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    # Learning rate 0: val_loss is flat from the first epoch, a plateau.
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    phase = ShrinkPhase(patience=2, monitor="val_loss", tolerance=0.05, relative=True)
    model.fit(x, y, epochs=5, batch_size=32, validation_data=(xv, yv), verbose=0, callbacks=[phase])
    assert phase.result.started_at_epoch == 3  # best at epoch 0, no gain in 1 and 2
    assert phase.result.final <= phase.result.baseline * 1.05 + 1e-6


def test_without_validation_data_it_says_what_to_do():
    model = trained_classifier()
    x, y = classification_data()
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[ShrinkPhase(start_epoch=1)])
    with pytest.raises(ValueError, match="validation_data"):
        rk.shrink(model, x, y)


class Sabotage(keras.callbacks.Callback):
    """Wrecks training at a chosen epoch: NaN weights, or an exception."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_train_batch_end(self, batch, logs=None):
        if self.model._regkit_epoch == self.epoch and batch == 2:
            kernel = self.model.get_layer("hidden").kernel
            kernel.assign(keras.ops.full(kernel.shape, float("nan")))
            if self.action != "nan":
                raise self.action  # leaving NaN weights behind

    def on_epoch_begin(self, epoch, logs=None):
        self.model._regkit_epoch = epoch


def test_nan_loss_during_the_shrink_ends_at_good_weights():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    before = accuracy(model, xv, yv)
    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=4, monitor="val_accuracy", tolerance=0.02,
                       callbacks=[Sabotage(2, "nan")], batch_size=32)
    assert 2 in result.rejected_epochs
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert accuracy(model, xv, yv) >= before - 0.02 - 1e-6


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("callback failed")], ids=["interrupt", "exception"])
def test_interrupted_shrink_restores_accepted_weights_and_removes_penalty(error):
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    before = accuracy(model, xv, yv)
    with pytest.raises(type(error)):
        rk.shrink(model, x, y, validation_data=(xv, yv), epochs=5, monitor="val_accuracy", tolerance=0.02,
                  callbacks=[Sabotage(2, error)], batch_size=32)
    assert model.losses == []
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert accuracy(model, xv, yv) >= before - 0.02 - 1e-6


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "start_epoch` or `patience"),
    ({"start_epoch": 0}, ValueError, "baseline=` or `validation_data="),
    ({"start_epoch": 1, "tolerance": -1.0}, ValueError, "argument `tolerance`"),
    ({"start_epoch": 1, "growth": 1.0}, ValueError, "argument `growth`"),
    ({"start_epoch": 1, "strength": -1e-4}, ValueError, "argument `strength`"),
    ({"start_epoch": 1, "mode": "up"}, ValueError, "argument `mode`"),
    ({"start_epoch": 1, "penalty": "l1"}, TypeError, "argument `penalty`"),
    ({"start_epoch": 1, "weights": "kernels"}, ValueError, "argument `weights`"),
    ({"patience": 0}, ValueError, "argument `patience`"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ShrinkPhase(**kwargs)


def test_unit_granularity_kills_whole_hidden_units_and_reports_them():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    before = accuracy(model, xv, yv)
    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=4, monitor="val_accuracy",
                       tolerance=0.02, strength=1e-3, batch_size=32, granularity="unit")
    hidden = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    dead = (hidden == 0).all(axis=0)
    # Zeros come in whole units: a hidden unit is all zero or has no zero
    # left by pruning (a weight could only be exactly 0 by chance).
    assert ((hidden == 0).any(axis=0) == dead).all()
    assert dead.sum() >= 8
    assert result.dead_units["hidden"] == (int(dead.sum()), 32)
    # The output layer's units are the outputs: untouched.
    assert result.dead_units["out"] == (0, 2)
    assert (keras.ops.convert_to_numpy(model.get_layer("out").kernel) != 0).all()
    assert accuracy(model, xv, yv) >= before - 0.02 - 1e-6
    assert f"hidden {int(dead.sum())}/32" in str(result)
    assert result.granularity == "unit"
    assert f"pruned at unit RMS / layer mean <= {result.threshold:.3g}" in str(result)
    assert model.losses == []


def test_unit_granularity_uses_group_lasso_by_default():
    model = trained_classifier()
    phase = ShrinkPhase(start_epoch=0, baseline=1.0, granularity="unit", monitor="val_accuracy")
    phase.set_model(model)
    phase.on_train_begin()
    try:
        regularizer = model.get_layer("hidden").kernel.regularizer
        assert isinstance(regularizer, rk.regularizers.GroupLasso)
        assert model.get_layer("out").kernel.regularizer is None
    finally:
        phase.abort()
    assert model.get_layer("hidden").kernel.regularizer is None
    with pytest.raises(ValueError, match=r"argument `granularity`.*Received: granularity='rows'"):
        ShrinkPhase(start_epoch=1, granularity="rows")


def test_max_sparsity_caps_the_cuts_then_fine_tunes():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    # A tolerance that always holds: without the cap, the cuts would go far past 0.5.
    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=4, monitor="val_accuracy",
                       tolerance=1.0, strength=1e-3, batch_size=32, max_sparsity=0.5)
    assert 0.5 <= result.sparsity <= 0.5 + 2 / 320  # 320 kernel entries
    # Reached after the first epoch; the rest fine-tuned with the zeros held.
    assert result.outcome == "fine-tuned"
    assert model.losses == []
    with pytest.raises(ValueError, match=r"argument `max_sparsity`.*max_sparsity=1.5"):
        ShrinkPhase(start_epoch=1, max_sparsity=1.5)


def test_rejections_back_off_to_an_epoch_without_penalty_then_climb_again():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)

    class FailEpochs(keras.callbacks.Callback):
        """Reports a failing val_accuracy for epochs 0-3 (before the phase reads it)."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch <= 3:
                logs["val_accuracy"] = 0.0

    strengths, penalties, kernels = [], [], []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            regularizer = self.model.get_layer("hidden").kernel.regularizer
            strengths.append(regularizer.current_strengths()["alpha"])
            penalties.append(float(sum(keras.ops.convert_to_numpy(loss) for loss in self.model.losses)))
            kernels.append(keras.ops.convert_to_numpy(self.model.get_layer("hidden").kernel))

    phase = ShrinkPhase(start_epoch=0, validation_data=(xv, yv), monitor="val_accuracy", tolerance=0.02,
                        strength=1e-3, growth=2.0, prune=False)
    with phase:
        model.fit(x, y, epochs=6, batch_size=32, validation_data=(xv, yv), verbose=0,
                  callbacks=[FailEpochs(), phase, Spy()])
    assert phase.result.rejected_epochs == [0, 1, 2, 3]
    # Two rungs down per rejection: 1e-3, 1e-3/4, 1e-3/16, then none; an
    # accepted epoch without penalty climbs back to the weakest one.
    np.testing.assert_allclose(strengths, [1e-3, 2.5e-4, 6.25e-5, 0.0, 0.0, 6.25e-5], rtol=1e-5)
    assert penalties[3] == penalties[4] == 0.0 and penalties[2] > 0.0
    # The accepted epoch without penalty trained: its weights were kept.
    assert not np.allclose(kernels[5], kernels[4])


def test_strength_zero_cuts_units_with_only_training_between_the_cuts():
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    penalties, dead = [], []

    class Spy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            # The phase's penalty is attached, at strength 0.
            assert model.get_layer("hidden").kernel.regularizer is not None
            penalties.append(float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)))

        def on_epoch_end(self, epoch, logs=None):
            dead.append(rk.dead_units(model)["hidden"][0])

    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=4, monitor="val_loss", relative=True,
                       tolerance=0.5, strength=0.0, granularity="unit", batch_size=32, callbacks=[Spy()])
    assert penalties == [0.0] * 4  # training saw no penalty
    # Every epoch held the loss, and each cut built on the last.
    assert result.accepted_epochs == [0, 1, 2, 3]
    assert dead == sorted(dead) and dead[-1] > dead[0] > 0
    assert result.dead_units["hidden"][0] >= dead[-1]
    assert model.losses == []


@pytest.mark.parametrize("strength,accepted", [(1e-2, False), (0.0, True)])
def test_val_loss_counts_the_shrink_penalty_against_the_tolerance(strength, accepted):
    model = trained_classifier()
    x, y = classification_data()
    xv, yv = classification_data(seed=1)
    # Learning rate 0: the weights never move, so val_loss changes only by
    # the temporary penalty, which Keras adds to it.
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = rk.shrink(model, x, y, validation_data=(xv, yv), epochs=2, monitor="val_loss",
                       tolerance=1e-4, strength=strength, prune=False, batch_size=32)
    assert (result.accepted_epochs == [0, 1]) is accepted
    assert (result.rejected_epochs == []) is accepted
