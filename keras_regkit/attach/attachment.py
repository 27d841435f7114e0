"""`Attachment`: what `apply_regularizers` changed, its undo and its record.

An attachment undoes itself, writes its penalties as JSON
(`Attachment.to_json`) that `read_attachment` reads back on a reloaded
model, and, where a saved config cannot carry some of its penalties, warns
when the model is saved (`SaveWarning`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import keras

from keras_regkit import weights as weights_lib
from keras_regkit._keras import serialization as keras_serialization
from keras_regkit._step_functions import rebuild_step_functions
from keras_regkit.weights import WeightRef


@dataclasses.dataclass(eq=False)
class Attachment:
    """What `apply_regularizers` or `remove_regularizers` changed.

    Attributes:
        changes: `(WeightRef, previous_regularizer)` pairs, in the order applied.
        owner_changes: `(composite_layer, attribute, previous)` for the
            composite layers (e.g. `MultiHeadAttention`) whose own
            `kernel_regularizer`-style argument now carries the penalty, so
            that it is saved.
        unsaved: The `WeightRef`s whose penalty a saved model will not carry
            (inside composite layers that rebuild their sublayers from their
            own arguments; set with `allow_unsaved=True`). `to_json()` and
            `reapply_regularizers` put them back after loading.

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
    owner_changes: list[tuple[keras.layers.Layer, str, object]] = dataclasses.field(default_factory=list)
    unsaved: list[WeightRef] = dataclasses.field(default_factory=list)

    @property
    def refs(self) -> list[WeightRef]:
        return [ref for ref, _ in self.changes]

    def undo(self) -> None:
        """Puts every changed weight's previous regularizer back."""
        for ref, previous in reversed(self.changes):
            ref.set_regularizer(previous)
        for owner, attribute, previous in reversed(self.owner_changes):
            setattr(owner, attribute, previous)
        SaveWarning.unhook(self)
        rebuild_step_functions(self.model)

    def to_json(self) -> str:
        """The penalties this attachment set (and those of its `unsaved`
        weights), as JSON: pass it to `reapply_regularizers` after loading
        the model to set them again (needed for `unsaved` ones; harmless for
        the others). Regularizers shared by several weights stay shared."""
        configs, index, entries = [], {}, []
        # The weights kept penalized inside a composite whose own argument
        # had to be cleared (a penalty removed from part of it) too: a
        # reloaded model has lost theirs.
        changed = {id(ref.variable) for ref, _ in self.changes}
        refs = [ref for ref, _ in self.changes] + [r for r in self.unsaved if id(r.variable) not in changed]
        for ref in refs:
            regularizer = ref.regularizer
            if regularizer is not None and id(regularizer) not in index:
                index[id(regularizer)] = len(configs)
                configs.append(keras.saving.serialize_keras_object(regularizer))
            entries.append({"path": ref.path, "kind": ref.kind,
                            "regularizer": None if regularizer is None else index[id(regularizer)]})
        return json.dumps({"keras_regkit_attachment": 1, "regularizers": configs, "weights": entries})

    def __len__(self) -> int:
        return len(self.changes)


def read_attachment(model: keras.Model, attachment_json) -> list:
    """The `(WeightRef, regularizer)` pairs an `Attachment.to_json()` text
    names on `model`. Every entry is checked before the caller changes
    anything, so an edited or another model's text leaves the model as it
    was."""

    def invalid(what: str) -> ValueError:
        return ValueError(f"Invalid value for argument `attachment_json`: {what}")

    try:
        record = json.loads(attachment_json)
    except (TypeError, ValueError):
        record = None
    if (
        not isinstance(record, dict)
        or record.get("keras_regkit_attachment") != 1
        or not isinstance(record.get("regularizers"), list)
        or not isinstance(record.get("weights"), list)
    ):
        raise invalid(
            "expected the text of `Attachment.to_json()` (a JSON object with `keras_regkit_attachment`: 1, "
            f"`regularizers` and `weights` lists). Received: {str(attachment_json)[:80]!r}"
        )
    regularizers = []
    for index, config in enumerate(record["regularizers"]):
        try:
            regularizer = keras.saving.deserialize_keras_object(config)
        except Exception as error:  # whatever Keras raises for a config it cannot read
            raise invalid(
                f"regularizers[{index}] cannot be deserialized ({type(error).__name__}: {str(error)[:200]}). "
                f"Received: {str(config)[:200]}"
            ) from None
        if not isinstance(regularizer, keras.regularizers.Regularizer):
            raise invalid(
                f"regularizers[{index}] is a {type(regularizer).__name__}, not a "
                f"keras.regularizers.Regularizer. Received: {str(config)[:200]}"
            )
        regularizers.append(regularizer)
    by_key = {(ref.path, ref.kind): ref for ref in weights_lib.iter_weights(model, "all")}
    assignments = []
    for index, entry in enumerate(record["weights"]):
        where = f"entry weights[{index}] = {entry!r}"
        if not isinstance(entry, dict) or set(entry) != {"path", "kind", "regularizer"}:
            raise invalid(f"{where}: expected a dict with exactly the keys 'path', 'kind' and 'regularizer'.")
        path, kind, position = entry["path"], entry["kind"], entry["regularizer"]
        if not isinstance(path, str) or not isinstance(kind, str):
            raise invalid(f"{where}: expected 'path' and 'kind' as strings.")
        if position is not None and (
            isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(regularizers)
        ):
            raise invalid(
                f"{where}: expected 'regularizer' to be null or an index into `regularizers`, an int "
                f"in [0, {len(regularizers) - 1}]."
            )
        if (path, kind) not in by_key:
            raise invalid(
                f"{where}: model '{model.name}' has no weights {path}:{kind} that the attachment names; "
                "pass the model it was taken from (or a reloaded copy). Its weights: "
                f"{[f'{p}:{k}' for p, k in by_key][:8]}"
            )
        assignments.append((by_key[(path, kind)], None if position is None else regularizers[position]))
    return assignments


class SaveWarning:
    """Warns once, when the model or a composite layer holding unsaved
    penalties writes its config (`model.save`, `get_config`,
    `clone_model`), which penalties the file will not carry."""

    def __init__(self, attachment: Attachment):
        self.attachment = attachment
        self.warned = False

    @classmethod
    def hook(cls, attachment: Attachment) -> None:
        """Makes the layers of `attachment` warn when they write their config."""
        if not attachment.unsaved:
            return
        hook = cls(attachment)
        for layer in cls._hooked_layers(attachment):
            keras_serialization.wrap_get_config(layer, hook._warn)

    @classmethod
    def unhook(cls, attachment: Attachment) -> None:
        """Takes off what `hook(attachment)` set."""
        if not attachment.unsaved:
            return
        for layer in cls._hooked_layers(attachment):
            keras_serialization.unwrap_get_config(layer)

    @staticmethod
    def _hooked_layers(attachment: Attachment) -> list:
        """The composite layers, and the model itself: a KerasHub backbone
        saves its own arguments, never its layers' configs."""
        layers = {id(ref.owner): ref.owner for ref in attachment.unsaved}
        layers[id(attachment.model)] = attachment.model
        return list(layers.values())

    def _warn(self) -> None:
        if not self.warned and any(r.regularizer is not None for r in self.attachment.unsaved):
            self.warned = True
            warnings.warn(
                "The model's saved config will not carry the penalties of "
                f"{[r.path + ':' + r.kind for r in self.attachment.unsaved]} (attached with "
                "allow_unsaved=True inside layers that rebuild their sublayers). Keep "
                "`attachment.to_json()` and call `keras_regkit.reapply_regularizers(model, "
                "text)` after loading.",
                stacklevel=4,  # past this, the `get_config` wrapper and Keras' call of it
            )
