"""The examples in public docstrings run, and print what they claim."""

import doctest
import importlib

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit import callbacks, schedules, stats, weights

MODULES = [
    schedules, weights, stats, callbacks.scheduler, callbacks.sparsity, callbacks.proximal,
    *(importlib.import_module(f"keras_regkit.{name}") for name in (
        "regularizers.elementwise", "regularizers.group_lasso", "regularizers.combined", "attach.apply",
        "attach.attachment", "proximal", "pruning.hold", "pruning.one_shot", "pruning.reconstruction", "pruning.units", "compacting.rebuild",
        "search.strength",
        "search.result", "saving",
        "shrinking", "shrinking.result", "shrinking.ramps", "shrinking.guards", "shrinking.climb",
        "shrinking.policies", "compacting.result", "layers.kinds")),
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    if module is callbacks.scheduler and keras.backend.backend() == "jax":
        pytest.skip("RegularizationScheduler's example uses update_freq='batch', which JAX refuses "
                    "(test_scheduler runs its epoch mode there)")
    # Examples name everything through these three, as a user's code would.
    globs = {"keras": keras, "np": np, "rk": rk}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for test in finder.find(module, globs=dict(globs)):
        examples += len(test.examples)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert examples > 0, f"{module.__name__} has no docstring examples"
    assert result.failed == 0
