"""A `fit` interrupted and resumed with `keras.callbacks.BackupAndRestore`
ends as if it had never been interrupted: the shrink phase and its state
(`shrinking/state.py`). The schedules' resume is in test_scheduler.py.

Each interruption is an exception raised from a callback (as Keras' own
BackupAndRestore tests do), or once a process killed outright; each resume
builds the model, optimizer and callbacks afresh from the same code, as a new
process would.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.callbacks import RegularizationScheduler, ShrinkPhase
from keras_regkit.pruning.hold import held_masks
from keras_regkit.shrinking import SparsityTarget, ToleranceClimb

from conftest import Interrupt, resumed

# JAX refuses update_freq="batch" (its compiled step can't see the optimizer's
# counter); the shrink runs use the mode every backend has.
MODE = "epoch" if keras.backend.backend() == "jax" else "batch"


def classification_data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


class Spy(keras.callbacks.Callback):
    """Records, as each epoch's first step begins (listed last, so after
    every other callback's `on_epoch_begin` and `on_train_batch_begin`),
    what that step will use."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if batch:
            return
        self.seen[self.epoch] = {
            "weights": self.model.get_weights(),
            "penalty": float(sum(keras.ops.convert_to_numpy(loss) for loss in self.model.losses)),
            "held": {
                i: keras.ops.convert_to_numpy(mask)
                for variable, mask in held_masks(self.model)
                for i, v in enumerate(self.model.weights) if v is variable
            },
        }


RESULT_FIELDS = ("baseline", "final", "started_at_epoch", "steps", "cuts", "rollbacks", "stopped_at", "threshold",
                 "outcome", "sparsity", "levels", "monitor")


def shrink_fit(backup, extra=(), backup_first=False, between=(), before=(), made=None):
    """Trains from scratch for 6 epochs with a scheduled penalty of the
    user's; the shrink (tolerance mode, cutting every 4 steps) starts at
    epoch 2, and the last level, 99.9 % (no weight left), fails its checks.
    `extra` callbacks go after ShrinkPhase and BackupAndRestore, `between`
    between them, `before` before them; `made` (a list) receives
    `(model, phase)` before `fit` starts. Returns a plain record of the run."""
    keras.utils.set_random_seed(0)
    sched = keras.optimizers.schedules.PolynomialDecay(0.0, 40, 1e-4)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(32, activation="relu", name="hidden", kernel_regularizer=rk.regularizers.L1(sched)),
        keras.layers.Dense(2, name="out"),
    ])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x, y = classification_data(256, 0)
    xv, yv = classification_data(128, 1)
    phase = ShrinkPhase(start_epoch=2, policy=ToleranceClimb(0.02, cut_every=4, max_sparsity=0.999, levels=(0.5, 0.9)),
                        backup_dir=backup, validation_data=(xv, yv))
    first, second = phase, keras.callbacks.BackupAndRestore(backup)
    if backup_first:
        first, second = second, first
    spy = Spy()
    if made is not None:
        made.append((model, phase))
    with phase:
        model.fit(x, y, epochs=6, batch_size=32, validation_data=(xv, yv), shuffle=False, verbose=0,
                  callbacks=[*before, first, *between, second, *extra, RegularizationScheduler(MODE), spy])
    return {
        "result": {name: getattr(phase.result, name) for name in RESULT_FIELDS},
        "seen": spy.seen,
        "weights": model.get_weights(),
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
    }


def assert_same_result(got, expected):
    for name in RESULT_FIELDS:
        if name == "levels":  # (sparsity, metric, held) of each check, in order
            assert len(got[name]) == len(expected[name])
            for a, b in zip(got[name], expected[name]):
                assert tuple(a) == pytest.approx(tuple(b)), name
        else:
            assert got[name] == pytest.approx(expected[name]), name


def assert_same_run(got, expected):
    """Same result and, at each epoch `got` ran, the same weights, penalty
    and held zeros as the next train step of `expected` saw."""
    assert_same_result(got["result"], expected["result"])
    assert got["seen"], "the resumed run ran no epoch"
    for epoch, seen in got["seen"].items():
        want = expected["seen"][int(epoch)]
        assert seen["penalty"] == pytest.approx(want["penalty"], rel=1e-5), epoch
        assert sorted(map(int, seen["held"])) == sorted(want["held"]), epoch
        for i, mask in seen["held"].items():
            np.testing.assert_array_equal(mask, want["held"][int(i)])
        for a, b in zip(seen["weights"], want["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(got["weights"], expected["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


_REFERENCE = {}


def reference():
    """The uninterrupted run, computed once (tests only read it)."""
    if not _REFERENCE:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            _REFERENCE["run"] = shrink_fit(os.path.join(folder, "backup"))
    return _REFERENCE["run"]


def state_files(backup):
    folder = os.path.join(backup, "keras_regkit_shrink")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_shrink_resumes_as_if_never_interrupted(tmp_path):
    expected = reference()
    # The reference goes through every part of the phase: ramping, the
    # check's stop and rollback, the zeros held to the end.
    assert expected["result"]["started_at_epoch"] == 2 and expected["result"]["rollbacks"] >= 1
    assert expected["result"]["outcome"] == "stopped by the check"
    assert expected["seen"][3]["held"] and not expected["seen"][1]["held"]
    backup = str(tmp_path / "backup")
    made, left_on_disk = [], []

    def run(extra):
        try:
            return shrink_fit(backup, extra, made=made)
        finally:
            left_on_disk.append(state_files(backup))

    # While waiting for the start, mid-shrink, and near the end.
    got = resumed(run, [Interrupt(1), Interrupt(3), Interrupt(5)])
    assert_same_run(got, expected)
    assert sorted(got["seen"]) == [5]  # the last run went on from epoch 5
    assert left_on_disk[:3] == [[f"state-{n}.{ext}" for n in done for ext in ("json", "npz")]
                                for done in ([1], [2, 3], [4, 5])]
    # Finished normally: the state is gone, as BackupAndRestore's backup is.
    assert not os.path.exists(backup)
    # The run interrupted mid-shrink ended at its last good weights: nothing
    # held, the user's learning rate and penalty back.
    model, phase = made[1]
    assert phase.result.outcome == "interrupted"
    assert held_masks(model) == []
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-2)
    assert isinstance(model.get_layer("hidden").kernel.regularizer, rk.regularizers.L1)
    assert got["learning_rate"] == pytest.approx(1e-2)


def test_interruption_between_the_two_saves_loses_nothing(tmp_path):
    backup = str(tmp_path / "backup")
    # The phase saved epoch 3's state, BackupAndRestore did not: the resume
    # takes the phase's previous state, the one that matches the backup.
    got = resumed(lambda extra: shrink_fit(backup, between=extra), [Interrupt(3, "epoch_end")])
    assert sorted(got["seen"]) == [3, 4, 5]
    assert_same_run(got, reference())


@pytest.mark.parametrize("epoch", [3, 4, 5])
def test_a_level_waiting_for_its_check_resumes_waiting(tmp_path, epoch):
    # The reference's climb at the end of each epoch before the interrupted
    # one (the state a resume starts from): epoch 2, the 50 % level waits
    # for its check (at step 12); epoch 3, it held ahead of the start, so the
    # climb skipped 90 % and 99.9 % waits for its check (step 20); epoch 4, 99.9 %
    # failed it and trains on to its second check (step 26). The resume must
    # go on waiting (checking against the start's validation results), not
    # climb on, check early or forget the start.
    backup = str(tmp_path / "backup")
    made = []
    got = resumed(lambda extra: shrink_fit(backup, extra, made=made), [Interrupt(epoch)])
    assert sorted(got["seen"]) == list(range(epoch, 6))
    assert_same_run(got, reference())
    assert [(level, held) for level, _, held in got["result"]["levels"]] == [(0.5, True), (0.999, False), (0.999, False)]


def test_interrupted_while_finishing_resumes_the_ending(tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        # Listed first, its on_train_end stops those of the others.
        shrink_fit(backup, before=[Interrupt(None, "train_end")])
    # No epoch is left to run: the resumed fit only ends the phase.
    got = shrink_fit(backup)
    assert got["seen"] == {}
    assert_same_result(got["result"], reference()["result"])
    for a, b in zip(got["weights"], reference()["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a process killed and a fresh one
def test_resumes_after_a_process_is_killed(tmp_path):
    # A process dies mid-shrink, with no cleanup at all; the resume runs here.
    # BackupAndRestore is first in the list: its backup holds the weights
    # from before the phase's verdict, which the phase's own state corrects.
    script = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import keras
        from test_shrinking_resume import shrink_fit  # the code of the in-process runs

        class Kill(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_end(self, batch, logs=None):
                if self.epoch == 3 and batch == 1:
                    os._exit(75)  # mid-shrink, with no cleanup at all

        shrink_fit(sys.argv[1], [Kill()], backup_first=True)
        """
    )
    backup = str(tmp_path / "backup")
    killed = subprocess.run([sys.executable, "-c", script, backup], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert killed.returncode == 75, killed.stderr[-3000:]
    assert state_files(backup) == ["state-2.json", "state-2.npz", "state-3.json", "state-3.npz"]
    got = shrink_fit(backup, backup_first=True)
    assert sorted(got["seen"]) == [3, 4, 5]
    assert_same_run(got, reference())


def small_fit(backup, extra=(), initial_epoch=0, units=4):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x, y = classification_data(64, 0)
    phase = ShrinkPhase(start_epoch=1, policy=SparsityTarget(0.5, score="magnitude"), backup_dir=backup)
    with phase:
        model.fit(x, y, epochs=4, initial_epoch=initial_epoch, batch_size=16, verbose=0, callbacks=[phase, *extra])
    return phase


def test_state_older_than_the_backup_warns_and_goes_on(tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        small_fit(backup, [Interrupt(2)])
    assert state_files(backup)[-1] == "state-2.npz"
    # Going on from epoch index 3, as a backup the phase had not matched
    # would: it takes its state after epoch index 1, and says so.
    with pytest.warns(UserWarning, match="resumes at epoch 4 from its state after epoch 2"):
        phase = small_fit(backup, initial_epoch=3)
    assert phase.result.started_at_epoch == 1 and phase.result.sparsity == 0.5
    assert phase.result.steps == 3 * 4 - 4  # epoch index 2 was lost with its state


def test_refuses_the_state_of_another_model(tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        small_fit(backup, [Interrupt(2)])
    with pytest.raises(ValueError, match=r"cannot resume from .*state-2\.json.*weights of shapes"):
        small_fit(backup, initial_epoch=2, units=5)


@pytest.mark.parametrize("backup_dir", [3, ""])
def test_rejects_a_bad_backup_dir(backup_dir):
    with pytest.raises(TypeError, match=rf"argument `backup_dir`.*Received: backup_dir={backup_dir!r}"):
        ShrinkPhase(start_epoch=1, sparsity=0.5, backup_dir=backup_dir)


def test_a_run_started_afresh_replaces_the_state_of_an_earlier_one(tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        small_fit(backup, [Interrupt(3)])  # leaves states after epochs 2 and 3
    with pytest.raises(RuntimeError, match="interrupted"):
        small_fit(backup, [Interrupt(1)])  # from scratch: no state is that early
    assert state_files(backup) == ["state-1.json", "state-1.npz"]
    phase = small_fit(backup, initial_epoch=1)
    assert phase.result.started_at_epoch == 1 and phase.result.steps == 3 * 4
