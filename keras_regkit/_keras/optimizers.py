"""Private reads of Keras' optimizers: which optimizer is applying a step;
the list of an optimizer's own variables (which JAX's compiled step takes
as its inputs), and how Keras' saving reads and writes them."""

from __future__ import annotations

import contextlib

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


def own_variables(optimizer) -> list:
    """The list an optimizer keeps its own variables in: `optimizer.variables`
    is a copy of it (a `LossScaleOptimizer`'s adds its inner one's)."""
    try:
        variables = optimizer._variables
    except AttributeError as error:
        raise moved("keras", "an optimizer's `_variables` list", error) from None
    if not isinstance(variables, list):
        raise moved("keras", "an optimizer's `_variables` list (no longer a list)")
    return variables


@contextlib.contextmanager
def without(optimizer, variables):
    """`optimizer`'s own variables without `variables` for the time of the
    block; they are put back in their places after."""
    own = own_variables(optimizer)
    taken = [(i, v) for i, v in enumerate(own) if any(v is x for x in variables)]
    for i, _ in reversed(taken):
        del own[i]
    try:
        yield
    finally:
        for i, v in taken:
            own.insert(i, v)


_SAVING = ("save_own_variables", "load_own_variables")


def save_without(optimizers, stepping, hidden) -> None:
    """Makes Keras' saving of each of `optimizers` (a model's optimizer and
    the inner one it steps with) write, and its loading read, the state
    without the variables `hidden()` lists among `stepping`'s own: a file
    saved with them holds what one saved without them does, and loads into
    an optimizer without them. Keras' saving calls these two methods on
    the instance (`saving_lib._save_state`, `_load_state`)."""
    for optimizer in optimizers:
        if all(name in vars(optimizer) for name in _SAVING):
            continue
        for name in _SAVING:
            method = getattr(type(optimizer), name, None)
            if method is None:
                raise moved("keras", f"`Optimizer.{name}`")

            def hiding(store, method=method, optimizer=optimizer):
                with without(stepping, hidden()):
                    return method(optimizer, store)

            object.__setattr__(optimizer, name, hiding)


def save_all(optimizers) -> None:
    """Undoes `save_without`."""
    for optimizer in optimizers:
        for name in _SAVING:
            vars(optimizer).pop(name, None)
