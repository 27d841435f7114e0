"""Attach penalties to, and remove them from, an existing model."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence, Union

import keras

from keras_regkit import weights as weights_lib
from keras_regkit.regularizers import Combined, _Penalty
from keras_regkit.weights import LayerSelector, WeightRef


@dataclasses.dataclass(eq=False)
class Attachment:
    """What `apply_regularizers` or `remove_regularizers` changed.

    Attributes:
        changes: `(WeightRef, previous_regularizer)` pairs, in the order applied.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> attached = rk.apply_regularizers(model, {"*": rk.regularizers.L1(0.1)})
    >>> len(model.losses)
    1
    >>> attached.undo()
    >>> model.losses
    []
    """

    model: keras.Model
    changes: list[tuple[WeightRef, object]]

    @property
    def refs(self) -> list[WeightRef]:
        return [ref for ref, _ in self.changes]

    def undo(self) -> None:
        """Puts every changed weight's previous regularizer back."""
        for ref, previous in reversed(self.changes):
            ref.set_regularizer(previous)
        rebuild_step_functions(self.model)

    def __len__(self) -> int:
        return len(self.changes)


def apply_regularizers(
    model: keras.Model,
    regularizers: Mapping[LayerSelector, keras.regularizers.Regularizer],
    weights: Union[str, Sequence[str]] = "kernel",
) -> Attachment:
    """Attaches penalties to the layers of an existing model.

    Works on built, compiled and already trained models, with layers inside
    nested Functional, Sequential and subclassed models. The penalties take
    effect in the very next training step: a train function that already
    exists is rebuilt (Keras would otherwise keep using the losses it traced).
    A weight that already has a regularizer gets the new one instead; the
    returned `Attachment` can put the old ones back.

    Args:
        model: The model to change, in place.
        regularizers: Maps a layer selector to the regularizer for the
            selected layers. A selector is a name glob matched against the
            layer name or its path (`"encoder/*"`, `"dense_*"`), a layer
            class (`keras.layers.Conv2D`), or a callable `layer -> bool`.
            Selecting a layer also selects the layers inside it (an `LSTM`'s
            cell, a nested model's layers). Later entries win where two
            selectors overlap.
        weights: The weight kind, or a list of kinds, that get the penalty:
            `"kernel"` (default), `"bias"`, `"recurrent_kernel"`,
            `"depthwise_kernel"`, `"pointwise_kernel"`, `"embeddings"`,
            `"gamma"`, `"beta"`.

    Returns:
        An `Attachment` listing what changed; `attachment.undo()` reverts it.

    Raises:
        TypeError: If a selector or a regularizer has the wrong type.
        ValueError: If `weights` names an unknown kind, a selector matches
            no layer with such a weight (the message lists those that have
            one), or it matches a weight inside a composite layer such as
            `MultiHeadAttention`, whose config would not save the penalty.

    Layers of a subclassed model are reached, but such a model re-creates
    its layers from its own code when reloaded: penalties attached to it act
    in this process and are saved only where its code passes them on.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    >>> attached = rk.apply_regularizers(model, {"dense*": rk.regularizers.L1(0.01)})
    >>> [ref.path for ref in attached.refs]
    ['dense']
    """
    if not isinstance(regularizers, Mapping):
        raise TypeError(
            "Invalid value for argument `regularizers`: expected a dict that "
            "maps layer selectors to regularizers, e.g. "
            "{'dense*': keras_regkit.regularizers.L1(1e-4)}. "
            f"Received: regularizers={regularizers!r}"
        )
    kinds = weights_lib.normalize_kinds(weights)
    plan = []
    for selector, regularizer in regularizers.items():
        if not isinstance(regularizer, keras.regularizers.Regularizer):
            raise TypeError(
                f"Invalid regularizer for selector {selector!r}: expected a "
                "`keras.regularizers.Regularizer` instance (so it can be "
                f"saved with the model). Received: {regularizer!r}"
            )
        refs = weights_lib.select_weights(model, selector, kinds)
        inside = [ref for ref in refs if ref.owner is not None]
        if inside:
            owner = inside[0].owner
            raise ValueError(
                f"Selector {selector!r} matches '{inside[0].path}', which lives inside "
                f"the {type(owner).__name__} layer '{owner.name}'. That layer rebuilds "
                "its sublayers from its own config, so a penalty set here would be "
                "lost when the model is saved. Pass the regularizer to "
                f"{type(owner).__name__} itself (e.g. its `kernel_regularizer` "
                "argument) or select other layers."
            )
        plan.append((refs, regularizer))
    # Everything is validated before anything changes.
    return set_regularizers(
        model, [(ref, regularizer) for refs, regularizer in plan for ref in refs]
    )


def set_regularizers(model: keras.Model, assignments) -> Attachment:
    """Sets `(WeightRef, regularizer)` pairs, in order, and rebuilds the step
    functions once; the returned `Attachment` undoes it."""
    changes = []
    for ref, regularizer in assignments:
        changes.append((ref, ref.regularizer))
        ref.set_regularizer(regularizer)
    rebuild_step_functions(model)
    return Attachment(model, changes)


def remove_regularizers(
    model: keras.Model,
    layers: LayerSelector = "*",
    weights: Union[str, Sequence[str]] = "kernel",
) -> Attachment:
    """Removes the regularizers of the selected weights (the inverse of
    `apply_regularizers`).

    Args:
        model: The model to change, in place.
        layers: A layer selector, as in `apply_regularizers`. Defaults to all.
        weights: The weight kind or kinds to clear. Defaults to `"kernel"`.

    Returns:
        An `Attachment` of the weights that had a regularizer;
        `attachment.undo()` puts them back.

    Raises:
        ValueError: If `weights` names an unknown kind or the selector matches
            no layer with such a weight.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(2, kernel_regularizer=rk.regularizers.L2(0.1))])
    >>> removed = rk.remove_regularizers(model)
    >>> len(removed), model.losses
    (1, [])
    """
    refs = weights_lib.select_weights(model, layers, weights)
    return set_regularizers(model, [(ref, None) for ref in refs if ref.regularizer is not None])


def regularized_variables(model: keras.Model) -> list[keras.Variable]:
    """Every trainable variable of `model` with a regularizer, ours or not
    (Keras adds penalties of trainable weights only)."""
    return [v for v in model.trainable_weights if getattr(v, "regularizer", None) is not None]


def scheduled_regularizers(model: keras.Model) -> dict[str, _Penalty]:
    """Our regularizers with a schedule, keyed by the path of their first
    variable within `model` (e.g. `"dense/kernel"`). A regularizer shared by
    several weights appears once; parts of a `Combined` are found too; those
    driven by another object (`ShrinkPhase`'s own penalty) are left out."""
    found, seen = {}, set()
    prefix = f"{model.name}/"
    for variable in regularized_variables(model):
        path = variable.path
        path = path[len(prefix):] if path.startswith(prefix) else path
        for regularizer in _parts(variable.regularizer):
            if (
                isinstance(regularizer, _Penalty)
                and regularizer.is_scheduled
                and regularizer.driver is None
                and id(regularizer) not in seen
            ):
                seen.add(id(regularizer))
                found[path] = regularizer
    return found


def _parts(regularizer):
    if isinstance(regularizer, Combined):
        for part in regularizer.regularizers:
            yield from _parts(part)
    else:
        yield regularizer


def total_penalty(model: keras.Model):
    """The sum of all weight penalties of `model` at its current weights, as a
    float32 scalar tensor (computed on the device)."""
    terms = [
        keras.ops.cast(v.regularizer(v), "float32") for v in regularized_variables(model)
    ]
    return keras.ops.sum(keras.ops.stack(terms)) if terms else keras.ops.zeros(())


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
    captured when the step is traced (DESIGN.md trap 2).
    """
    return keras.backend.backend() != "jax"


def refresh_step_functions(model: keras.Model, losses_changed: bool = True) -> None:
    """Call after assigning such a variable from outside the step (`set_step`,
    a new `HoldZeros` mask): rebuilds the step functions where they hold it
    as a constant (JAX) and does nothing elsewhere, so TensorFlow and
    PyTorch never retrace for it."""
    if not step_functions_read_variables_live():
        rebuild_step_functions(model, losses_changed)
