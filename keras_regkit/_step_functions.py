"""Keeping Keras' compiled train and test steps in step with the model.

Keras traces a model's losses, and the optimizer step with each variable's
constraint, into its step functions once. Attaching penalties, holding zeros
and moving a schedule from outside the step all need to know when that trace
is stale; this is the one place that knows.
"""

from __future__ import annotations

import keras


def rebuild_step_functions(model: keras.Model, losses_changed: bool = True) -> None:
    """Makes the next train/test step see the model's current losses and
    constraints.

    Keras traces `model.losses` (and the optimizer step, with each variable's
    constraint) into its step functions once and reuses them, so a
    regularizer added afterwards would be silently ignored. Rebuilding is
    cheap here (tracing happens at the next call) and safe mid-`fit`: the fit
    loop looks the function up again at every step. A change of constraints
    only (`losses_changed=False`) leaves the test function alone.
    """
    functions = [("train_function", "make_train_function")]
    if losses_changed:
        functions.append(("test_function", "make_test_function"))
    for attribute, make in functions:
        if getattr(model, attribute, None) is not None:
            getattr(model, make)(force=True)


def step_functions_read_variables_live() -> bool:
    """Whether compiled train/test steps read a variable the model does not
    own (a regularizer's step, a `HoldZeros` mask) each time they run.

    True under TensorFlow (`tf.function` reads variables live) and PyTorch
    (eager; `torch.compile` takes tensors as inputs). False under JAX: its
    trainer passes only the model's, the optimizer's and the metrics' own
    variables into the jitted step, so any other variable is a constant
    captured when the step is traced.
    """
    return keras.backend.backend() != "jax"
