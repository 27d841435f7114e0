"""Keeping Keras' compiled train and test steps in step with the model.

Keras traces a model's losses, and the optimizer step with each variable's
constraint, into its step functions once. Attaching penalties, holding zeros
and moving a schedule from outside the step all need to know when that trace
is stale; this is the one place that knows.
"""

from __future__ import annotations

import weakref

import keras

from keras_regkit._keras import optimizers as fence
from keras_regkit._optimizer_slots import inner


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
    captured when the step is traced (a variable the optimizer step reads
    can be passed in: `pass_into_steps`).
    """
    return keras.backend.backend() != "jax"


# What `pass_into_steps` added to each optimizer's own variables, and the
# optimizers whose saving it changed for that one (it and its
# `LossScaleOptimizer`, if any).
_PASSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SAVES_CHANGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pass_into_steps(optimizer, variable) -> bool:
    """Makes the compiled train step read `variable` each time it runs,
    where that takes doing; returns whether it already did (so a new value
    needs no retrace; False: retrace once, and from then on it does).

    Under JAX the variable joins the own variables of the optimizer that
    applies the step (the inner one of a `LossScaleOptimizer`), which the
    trainer passes into the jitted step, until `take_out_of_steps`. It is
    left out of what the optimizer saves and loads (a backup made while it
    is in restores into an optimizer without it). An optimizer not built
    yet (Keras makes its list then) cannot take it: the variable stays a
    constant of the trace.
    """
    if step_functions_read_variables_live():
        return True
    stepping = inner(optimizer)
    if stepping is None or not stepping.built:
        return False
    passed = _PASSED.setdefault(stepping, [])
    if any(v is variable for v in passed):
        return True
    # Saving learns to leave it out before the optimizer holds it.
    fence.save_without({id(o): o for o in (optimizer, stepping)}.values(), stepping, lambda: passed)
    _SAVES_CHANGED.setdefault(stepping, weakref.WeakSet()).update((optimizer, stepping))
    fence.own_variables(stepping).append(variable)
    passed.append(variable)
    return False


def take_out_of_steps(optimizer, variable) -> bool:
    """Undoes `pass_into_steps`, in every optimizer the variable was passed
    into (the model may have been compiled with another since); returns
    whether it had been passed into `optimizer`'s step (which must then be
    retraced without it)."""
    stepping_now = inner(optimizer) if optimizer is not None else None
    taken = False
    for stepping, passed in list(_PASSED.items()):
        if not any(v is variable for v in passed):
            continue
        passed[:] = [v for v in passed if v is not variable]  # not `remove`: a Variable's `==` is elementwise
        own = fence.own_variables(stepping)
        own[:] = [v for v in own if v is not variable]
        if not passed:
            fence.save_all(list(_SAVES_CHANGED.pop(stepping, ())) or [stepping])
        taken |= stepping is stepping_now
    return taken
