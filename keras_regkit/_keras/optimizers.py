"""Private reads of Keras' optimizers: which optimizer is applying a step."""

from __future__ import annotations

import keras

from keras_regkit._keras import moved


def applying_optimizer():
    """The innermost optimizer whose `apply` is running, or None outside one.

    Keras' `Optimizer.apply` applies each variable's constraint inside
    `backend.name_scope(optimizer.name, caller=optimizer)`, and every name
    scope is kept on one stack with its caller: a constraint called there
    finds the optimizer that has just stepped (the inner optimizer of a
    `LossScaleOptimizer`, whose `apply` runs inside the outer one's).
    """
    try:
        from keras.src.backend.common.global_state import get_global_attribute
    except ImportError as error:
        raise moved("keras", "keras.src.backend.common.global_state.get_global_attribute", error) from None
    stack = get_global_attribute("name_scope_stack") or []
    for scope in reversed(stack):
        try:
            caller = scope.caller
        except AttributeError as error:
            raise moved("keras", "the `caller` of an entry of Keras' name scope stack", error) from None
        if isinstance(caller, keras.optimizers.Optimizer):
            return caller
    return None
