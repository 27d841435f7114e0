"""Attach penalties to, and remove them from, an existing model."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence, Union

import keras

from keras_regkit import _validate
from keras_regkit import weights as weights_lib
from keras_regkit._step_functions import rebuild_step_functions
from keras_regkit.attach.attachment import Attachment, SaveWarning, read_attachment
from keras_regkit.weights import LayerSelector


def apply_regularizers(
    model: keras.Model,
    regularizers: Mapping[LayerSelector, keras.regularizers.Regularizer],
    weights: Union[str, Sequence[str]] = "kernel",
    allow_unsaved: bool = False,
) -> Attachment:
    """Attaches penalties to the layers of an existing model.

    Works on built, compiled and already trained models, with layers inside
    nested Functional, Sequential and subclassed models. The penalties take
    effect in the very next training step: a train function that already
    exists is rebuilt (Keras would otherwise keep using the losses it traced).
    A weight that already has a regularizer gets the new one instead; the
    returned `Attachment` can put the old ones back.

    **Inside composite layers.** A layer such as `MultiHeadAttention` builds
    its sublayers from its own arguments. Where one of them carries the
    penalty (`MultiHeadAttention(kernel_regularizer=...)` for its four
    projection kernels), selecting all of those weights with one
    regularizer sets that argument too, so the penalty is saved and reloads
    with `safe_mode=True`. Where none does (KerasHub's `TransformerEncoder`,
    or part of an attention layer's kernels), a saved model would lose the
    penalty, so this is refused unless `allow_unsaved=True`: then the
    penalty acts in this process, saving the model warns once naming those
    weights, and `attachment.to_json()` + `reapply_regularizers(model,
    text)` set the same penalties again after loading.

    Args:
        model: The model to change, in place.
        regularizers: Maps a layer selector to the regularizer for the
            selected layers. A selector is a name glob matched against the
            layer name or its path (`"encoder/*"`, `"dense_*"`), a layer
            class (`keras.layers.Conv2D`), or a callable `layer -> bool`.
            Selecting a layer also selects the layers inside it (an `LSTM`'s
            cell, a nested model's layers, an attention layer's projections).
            Later entries win where two selectors overlap.
        weights: The weight kind, or a list of kinds, that get the penalty:
            `"kernel"` (default), `"bias"`, `"recurrent_kernel"`,
            `"depthwise_kernel"`, `"pointwise_kernel"`, `"embeddings"`,
            `"gamma"`, `"beta"`.
        allow_unsaved: Attach also where the model's config cannot save the
            penalty (see above). Defaults to False.

    Returns:
        An `Attachment` listing what changed; `attachment.undo()` reverts it.

    Raises:
        TypeError: If a selector or a regularizer has the wrong type.
        ValueError: If `weights` names an unknown kind, a selector matches
            no layer with such a weight (the message lists those that have
            one), or, without `allow_unsaved=True`, it matches a weight
            whose penalty a saved model would not carry.

    Warns:
        UserWarning: When a selected weight is frozen (`trainable=False`):
            Keras adds no penalty for it until it is trainable again.

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
    if not regularizers:
        raise ValueError(
            "Invalid value for argument `regularizers`: it is empty, so nothing would be "
            "attached. Map at least one layer selector to a regularizer, e.g. "
            "{'*': keras_regkit.regularizers.L1(1e-4)}."
        )
    _validate.boolean("allow_unsaved", allow_unsaved)
    kinds = weights_lib.normalize_kinds(weights)
    assignments = {}  # by variable: later selectors win
    for selector, regularizer in regularizers.items():
        if not isinstance(regularizer, keras.regularizers.Regularizer):
            raise TypeError(
                f"Invalid regularizer for selector {selector!r}: expected a "
                "`keras.regularizers.Regularizer` instance (so it can be "
                f"saved with the model). Received: {regularizer!r}"
            )
        _warn_if_not_reloadable(selector, regularizer)
        for ref in weights_lib.select_weights(model, selector, kinds):
            assignments.pop(id(ref.variable), None)
            assignments[id(ref.variable)] = (ref, regularizer)
    attachment = set_regularizers(model, list(assignments.values()), allow_unsaved)
    frozen = _frozen(model, attachment.refs)
    if frozen:
        warnings.warn(
            f"apply_regularizers: {len(frozen)} selected weights are frozen (trainable=False): "
            f"{frozen[:5]}{' ...' if len(frozen) > 5 else ''}. Keras adds no penalty for frozen "
            "weights, so theirs acts only once their layer is trainable again.",
            stacklevel=2,
        )
    return attachment


def reapply_regularizers(model: keras.Model, attachment_json: str) -> Attachment:
    """Sets the penalties an `Attachment.to_json()` recorded on `model` (a
    reloaded copy of the model it was taken from), by weight path and kind.

    Args:
        model: The model to change, in place.
        attachment_json: What `Attachment.to_json()` returned.

    Returns:
        The new `Attachment`.

    Raises:
        ValueError: If the text is not such a record (an entry missing a
            field, of a wrong type, an index out of range, a regularizer
            that cannot be read), or names a weight this model does not
            have. The message names the entry; the model is left as it was.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    >>> text = rk.apply_regularizers(model, {"*": rk.regularizers.L1(0.01)}).to_json()
    >>> copy = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    >>> len(rk.reapply_regularizers(copy, text)), len(copy.losses)
    (1, 1)
    """
    return set_regularizers(model, read_attachment(model, attachment_json), allow_unsaved=True)


def set_regularizers(model: keras.Model, assignments, allow_unsaved: bool = False) -> Attachment:
    """Sets `(WeightRef, regularizer)` pairs, in order, and rebuilds the step
    functions once; the returned `Attachment` undoes it. Weights inside
    composite layers go through the composite's own argument where it has
    one for all of them (so the penalty is saved); the others need
    `allow_unsaved`, checked before anything changes."""
    owner_changes, unsaved = _through_owners(model, assignments)
    if unsaved and not allow_unsaved:
        ref = unsaved[0]
        hint = weights_lib.owner_config_attr(ref.owner, ref.config_attr)
        raise ValueError(
            f"'{ref.path}' lives inside the {type(ref.owner).__name__} layer '{ref.owner.name}', "
            "which rebuilds its sublayers from its own arguments: after this change its penalty "
            "would act now but be lost when the model is saved"
            + (f" (its `{ref.config_attr}` argument covers all of its {ref.kind}s at once: give "
               "the whole layer one regularizer, or remove it from the whole layer, to go "
               "through it)" if hint else "")
            + ". Pass `allow_unsaved=True` to make this change anyway (saving then warns, and "
            "`Attachment.to_json()` with `reapply_regularizers` re-applies it after loading), "
            f"or select other layers. Weights concerned: {[r.path for r in unsaved][:5]}"
        )
    changes = []
    for ref, regularizer in assignments:
        changes.append((ref, ref.regularizer))
        ref.set_regularizer(regularizer)
    applied = []
    for owner, attribute, regularizer in owner_changes:
        applied.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, regularizer)
    attachment = Attachment(model, changes, applied, unsaved)
    SaveWarning.hook(attachment)
    rebuild_step_functions(model)
    return attachment


def _through_owners(model, assignments):
    """How the composite layers (e.g. `MultiHeadAttention`) holding assigned
    weights save them. Where the composite has its own argument for a kind
    (`kernel_regularizer`) and, after the change, all of its weights of that
    kind hold the same regularizer (or none), the argument carries it: an
    `(owner, attribute, regularizer)` change, saved with the model. Where
    they would differ, the argument is cleared (else a reload would bring
    back a penalty taken off part of them) and the weights still holding a
    penalty are returned as the unsaved `WeightRef`s; so are the penalized
    ones of a composite without such an argument."""
    groups = {}
    for ref, regularizer in assignments:
        if ref.owner is not None:
            # By variable, the later assignment winning, as they are applied.
            groups.setdefault((id(ref.owner), ref.kind), {})[id(ref.variable)] = (ref, regularizer)
    owner_changes, unsaved = [], []
    for members in groups.values():
        ref = next(iter(members.values()))[0]
        attribute = weights_lib.owner_config_attr(ref.owner, ref.config_attr)
        if attribute is None:
            unsaved.extend(r for r, regularizer in members.values() if regularizer is not None)
            continue
        siblings = [r for r in weights_lib.iter_weights(model, ref.kind) if r.owner is ref.owner]
        after = [members.get(id(r.variable), (r, r.regularizer)) for r in siblings]
        if len({id(regularizer) for _, regularizer in after}) == 1:
            owner_changes.append((ref.owner, attribute, after[0][1]))
        else:
            owner_changes.append((ref.owner, attribute, None))
            unsaved.extend(r for r, regularizer in after if regularizer is not None)
    return owner_changes, unsaved


def _warn_if_not_reloadable(selector, regularizer) -> None:
    # Keras saves a custom class under its registered name: an unregistered
    # one saves, and the file then fails to load without `custom_objects`.
    cls = type(regularizer)
    if cls.__module__.startswith("keras."):
        return
    if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls:
        return
    warnings.warn(
        f"apply_regularizers: the regularizer for selector {selector!r} is a {cls.__name__}, "
        "which is not registered with Keras: a model saved with it loads only with "
        f"`custom_objects={{'{cls.__name__}': {cls.__name__}}}`. Register the class with "
        "`@keras.saving.register_keras_serializable()` to make the file load on its own.",
        stacklevel=3,
    )


def _frozen(model, refs) -> list[str]:
    trainable = {id(v) for v in model.trainable_weights}
    return [f"{ref.path}:{ref.kind}" for ref in refs if id(ref.variable) not in trainable]


def remove_regularizers(
    model: keras.Model,
    layers: LayerSelector = "*",
    weights: Union[str, Sequence[str]] = "kernel",
    allow_unsaved: bool = False,
) -> Attachment:
    """Removes the regularizers of the selected weights (the inverse of
    `apply_regularizers`).

    Args:
        model: The model to change, in place.
        layers: A layer selector, as in `apply_regularizers`. Defaults to all.
        weights: The weight kind or kinds to clear. Defaults to `"kernel"`.
        allow_unsaved: Remove also part of the penalties that a composite
            layer's own argument gives (e.g. one of `MultiHeadAttention`'s
            four kernels, with `kernel_regularizer=`). Its argument is then
            cleared, so that a reload does not bring the removed penalty
            back, and the weights that keep theirs become `unsaved` (see
            `apply_regularizers`): saving warns, and `to_json()` with
            `reapply_regularizers` sets them again. Defaults to False.

    Returns:
        An `Attachment` of the weights that had a regularizer;
        `attachment.undo()` puts them back.

    Raises:
        ValueError: If `weights` names an unknown kind, the selector matches
            no layer with such a weight, or, without `allow_unsaved=True`,
            it takes off part of the penalties a composite layer's own
            argument gives.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(2, kernel_regularizer=rk.regularizers.L2(0.1))])
    >>> removed = rk.remove_regularizers(model)
    >>> len(removed), model.losses
    (1, [])
    """
    _validate.boolean("allow_unsaved", allow_unsaved)
    refs = weights_lib.select_weights(model, layers, weights)
    return set_regularizers(model, [(ref, None) for ref in refs if ref.regularizer is not None], allow_unsaved)
