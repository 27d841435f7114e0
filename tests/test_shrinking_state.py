"""The shrink's saved state on its own (`shrinking/state.py`): each part's
numbers and arrays come back as they were saved; a state of another format
or for other weights is refused, not misread."""

import json
import math
import os

import numpy as np
import pytest

from keras_regkit.shrinking.state import FORMAT, PhaseState

SHAPES = [[2, 3], [3]]


def parts(weights):
    return {
        "phase": {"phase": "ramping", "shapes": SHAPES, "step": 12, "current": weights},
        "good": {"weights": weights, "slots": [], "step": 8, "sparsity": 0.5},
        "policy": {"pending": None, "best_drift": math.inf, "stride": 2},
        "check": {"start_hits": np.arange(6.0).reshape(2, 3), "baseline": 0.875},
    }


def test_every_part_comes_back_as_it_was_saved(tmp_path):
    weights = [np.ones((2, 3), "float32"), np.zeros(3, "float32")]
    state = PhaseState(tmp_path)
    state.save(3, parts(weights))
    loaded, path = state.load(3, SHAPES)
    assert path.endswith("state-3.json")
    assert loaded["policy"] == {"pending": None, "best_drift": math.inf, "stride": 2}
    assert loaded["good"]["slots"] == [] and loaded["good"]["sparsity"] == 0.5
    for part in ("phase", "good"):
        got = loaded[part]["current" if part == "phase" else "weights"]
        assert len(got) == 2 and all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, weights))
    np.testing.assert_array_equal(loaded["check"]["start_hits"], np.arange(6.0).reshape(2, 3))
    # The list saved under two names is stored once.
    with np.load(os.path.join(state.directory, "state-3.npz")) as arrays:
        assert len(arrays.files) == 2 + 1


def test_the_newest_state_at_or_before_the_epoch_is_loaded_and_older_ones_are_deleted(tmp_path):
    state = PhaseState(tmp_path)
    for epochs_done in (1, 2, 3):
        state.save(epochs_done, parts([np.full((2, 3), epochs_done, "float32"), np.zeros(3)]))
    assert state.saved() == [3, 2]  # the one before is kept for a backup an epoch behind
    loaded, _ = state.load(2, SHAPES)  # a backup one epoch behind the phase's last save
    assert loaded["phase"]["current"][0][0, 0] == 2
    with pytest.warns(UserWarning, match="resumes at epoch 5 from its state after epoch 3"):
        loaded, _ = state.load(4, SHAPES)
    assert loaded["phase"]["current"][0][0, 0] == 3


def test_a_state_of_another_format_is_skipped_with_a_warning(tmp_path):
    state = PhaseState(tmp_path)
    state.save(2, parts([np.ones((2, 3)), np.zeros(3)]))
    path = os.path.join(state.directory, "state-2.json")
    with open(path) as f:
        saved = json.load(f)
    saved["format"] = FORMAT - 1  # written by an older release
    with open(path, "w") as f:
        json.dump(saved, f)
    with pytest.warns(UserWarning, match="skips its unreadable state.*unknown format"):
        assert state.load(2, SHAPES) is None


def test_a_state_for_other_weights_is_refused(tmp_path):
    state = PhaseState(tmp_path)
    state.save(2, parts([np.ones((2, 3)), np.zeros(3)]))
    with pytest.raises(ValueError, match="cannot resume from .*state-2.json.*weights of shapes"):
        state.load(2, [[4, 3], [3]])


def test_a_backup_dir_that_is_not_a_path_is_refused():
    with pytest.raises(TypeError, match="argument `backup_dir`"):
        PhaseState("")
