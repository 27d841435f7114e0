"""The state Keras' JAX trainer passes through its train function: what
`fit` calls each step is `model.train_function(state, iterator)`, which
returns `(logs, state)`, with `state` the tuple of the values of the
trainable, non-trainable, optimizer and metrics variables, in that order
(`JAXTrainer.fit`; not a documented contract)."""

from __future__ import annotations

from keras_regkit._keras import moved

_PARTS = 4  # trainable, non-trainable, optimizer, metrics


def trainable_values(state) -> list:
    """The values of `model.trainable_variables`, in their order, in a JAX
    train function's `state`."""
    _check(state)
    return list(state[0])


def with_trainable_values(state, values) -> tuple:
    """`state` with its trainable variables' values replaced by `values`."""
    _check(state)
    return (list(values), *state[1:])


def _check(state) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != _PARTS:
        raise moved("keras", "the state tuple (trainable, non-trainable, optimizer, metrics) that the JAX "
                             "trainer passes to `train_function`")
