"""Private parts of Keras' saving: a layer instance's own `get_config`.

Keras writes a model's config by asking each layer instance for
`layer.get_config()` (`model.save`, `model.get_config`,
`keras.models.clone_model`), so a function set on the instance answers
where its class's method would. It is set past `Layer.__setattr__`, which
tracks what a layer holds.
"""

from __future__ import annotations

from typing import Callable

from keras_regkit._keras import moved

# Marks our wrappers, holding the `get_config` each one wraps.
_WRAPPED = "_keras_regkit_original"
_WHAT = "a layer instance's own `get_config`, set past `Layer.__setattr__`"


def wrap_get_config(layer, before: Callable[[], None]) -> None:
    """Makes `layer.get_config()` call `before()`, then the `get_config` it
    had (its class's, or one wrapped here earlier)."""
    original = layer.get_config

    def get_config():
        before()
        return original()

    setattr(get_config, _WRAPPED, original)
    try:
        object.__setattr__(layer, "get_config", get_config)
    except (AttributeError, TypeError) as error:
        raise moved("keras", _WHAT, error) from None


def unwrap_get_config(layer) -> None:
    """Takes off the outermost `get_config` that `wrap_get_config` set on
    `layer`, if any: the one it wrapped answers again."""
    original = getattr(vars(layer).get("get_config"), _WRAPPED, None)
    if original is None:
        return
    try:
        if getattr(original, "__func__", None) is type(layer).get_config:
            object.__delattr__(layer, "get_config")  # back to the class's own
        else:
            object.__setattr__(layer, "get_config", original)  # an earlier wrapper
    except (AttributeError, TypeError) as error:
        raise moved("keras", _WHAT, error) from None
