"""The fence's reads of KerasTuner (`keras_regkit._keras.tuner`): each runs on
the installed KerasTuner and, if an upgrade moved what it reads, fails with
the message that names the version it was written for."""

import functools
import sys

import pytest

from keras_regkit._keras import WRITTEN_FOR, FenceError
from keras_regkit._keras import tuner as fence

from conftest import fenced

kt = pytest.importorskip("keras_tuner")


call = functools.partial(fenced, library="keras_tuner")


def test_create_objective_infers_directions_as_the_tuners_do():
    loss = call(fence.create_objective, "val_loss")
    accuracy = call(fence.create_objective, "val_accuracy")
    assert isinstance(loss, kt.Objective) and (loss.name, loss.direction) == ("val_loss", "min")
    assert (accuracy.name, accuracy.direction) == ("val_accuracy", "max")
    own = kt.Objective("zeros", "max")
    assert call(fence.create_objective, own) is own


def test_create_objective_passes_keras_tuners_own_refusal_through():
    with pytest.raises(ValueError, match="Could not infer optimization direction"):
        call(fence.create_objective, "zeros")


def test_a_moved_create_objective_names_keras_tuner_and_the_version_it_was_written_for(monkeypatch):
    # As if an upgrade had moved the module: importing it fails.
    monkeypatch.setitem(sys.modules, "keras_tuner.src.engine.objective", None)
    with pytest.raises(FenceError, match=rf"keras_tuner\.src\.engine\.objective\.create_objective.*written for "
                                         rf"keras_tuner {WRITTEN_FOR['keras_tuner']}.*has moved it"):
        fence.create_objective("val_loss")
