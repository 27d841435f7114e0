"""The inputs `export` receives (`check=`, `representative_data=`), checked
against the model's inputs before anything is converted or written: a
converter or runtime given the wrong data fails deep inside, with a message
about its own tensors."""

from __future__ import annotations

import collections.abc

import keras
import numpy as np


def conform(data, model, argument: str):
    """`data` as `export` passes it on: NumPy arrays in the structure of
    `model`'s inputs, each of the input's feature shape and dtype.

    Integer (or bool) data for a float input is cast to the input's dtype,
    and integral floats for an integer input (token ids) too.

    Args:
        data: An array (single-input models), a list of arrays in input
            order, or a dict keyed by input name.
        model: The model `data` is for.
        argument: The argument's name, for the messages.

    Returns:
        An array (a single-input model not called on a dict), else a dict
        keyed by input name.

    Raises:
        TypeError: not arrays, not numbers, or not the model's structure.
        ValueError: the wrong shape, names, no samples, NaN or inf.
    """
    if isinstance(data, (str, bytes)) or _is_stream(data):
        raise TypeError(
            f"Invalid value for argument `{argument}`: expected NumPy arrays (an array, or a list or dict of "
            f"them as the model's inputs). Received: {argument} of type {type(data).__name__}. For a dataset or "
            "a generator, gather the samples first, e.g. `np.concatenate([x for x, _ in dataset.take(10)])`: "
            "calibration reads a few hundred samples, the check as many as it is given.")
    inputs, keyed = _model_inputs(model)
    if inputs is None:  # a subclassed model: its inputs are known only by calling it
        arrays = keras.tree.map_structure(lambda value: _array(value, None, argument), data)
        _sample_count(arrays, argument)
        return arrays
    names = list(inputs)
    by_name = _by_name(data, inputs, keyed, argument, model.name)
    arrays = {name: _array(value, inputs[name], f"{argument}[{name!r}]" if len(names) > 1 else argument)
              for name, value in by_name.items()}
    _sample_count(arrays, argument)
    # By name for several inputs: how Keras, the converter's calibration and
    # both runtimes all take them (the file's input order is its own).
    return arrays[names[0]] if len(names) == 1 and not keyed else arrays


def input_names(model) -> tuple[list[str] | None, bool]:
    """The names of `model`'s inputs in order (None for a subclassed model),
    and whether it is called on a dict of them."""
    inputs, keyed = _model_inputs(model)
    return (None if inputs is None else list(inputs)), keyed


def _model_inputs(model):
    """({name: input tensor} in order, whether the model is called on a
    dict), or (None, False) when the model has no known inputs."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None, False
    try:
        structure = model.input  # a dict for a model built on a dict of inputs
    except (AttributeError, ValueError):  # a Sequential never called has only `inputs`
        structure = None
    if isinstance(structure, dict):
        return dict(structure), True
    return {tensor.name: tensor for tensor in inputs}, False


def _by_name(data, inputs, keyed, argument, model_name):
    """`data`'s arrays keyed by input name, or an error that says what the
    model takes."""
    names = list(inputs)
    if keyed:
        takes = f"model {model_name!r} is called on a dict: pass a dict keyed by its inputs {names}"
    elif len(names) == 1:
        takes = f"model {model_name!r} has one input: pass its array"
    else:
        takes = (f"model {model_name!r} has {len(names)} inputs {names}: pass a dict keyed by these names "
                 "or a list of arrays in this order")
    if isinstance(data, dict):
        if not keyed and len(names) == 1:
            raise TypeError(f"Invalid value for argument `{argument}`: {takes}, not a dict. "
                            f"Received: a dict with keys {sorted(map(str, data))}")
        if set(data) != set(names):
            missing, unknown = sorted(set(names) - set(data)), sorted(map(str, set(data) - set(names)))
            raise ValueError(f"Invalid value for argument `{argument}`: its keys are not the model's inputs "
                             f"({takes}). Missing: {missing}; unknown: {unknown}")
        return {name: data[name] for name in names}
    if not keyed and len(names) == 1:
        # `[x]`, a list of whole arrays; not a nested list of numbers or of samples.
        rank = len(inputs[names[0]].shape)
        if isinstance(data, (list, tuple)) and data and all(
                _is_array_like(item) and np.ndim(item) == rank for item in data):
            raise TypeError(f"Invalid value for argument `{argument}`: {takes}, not a {type(data).__name__} of "
                            f"{len(data)} arrays")
        return {names[0]: data}
    if keyed or not isinstance(data, (list, tuple)):
        raise TypeError(f"Invalid value for argument `{argument}`: {takes}. "
                        f"Received: {argument} of type {type(data).__name__}")
    if len(data) != len(names):
        raise ValueError(f"Invalid value for argument `{argument}`: {takes}. "
                         f"Received: a {type(data).__name__} of {len(data)} items")
    return dict(zip(names, data))


def _is_array_like(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_stream(data) -> bool:
    """A dataset, generator or other iterable read batch by batch."""
    if isinstance(data, (np.ndarray, list, tuple, dict)) or _is_array_like(data):
        return False
    return (isinstance(data, (collections.abc.Iterator, keras.utils.PyDataset)) or callable(data)
            or hasattr(data, "element_spec"))  # a tf.data.Dataset


def _array(value, spec, label):
    """`value` as a finite NumPy array of `spec`'s feature shape, cast to its
    dtype (float64 to float32 when `spec` is None)."""
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged nested lists, tensors NumPy cannot read
        raise ValueError(f"Invalid value for argument `{label}`: expected an array of numbers. "
                         f"NumPy cannot read it as one: {str(error).splitlines()[0]}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"Invalid value for argument `{label}`: expected numbers (bool, int or float). "
                        f"Received: an array of dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"Invalid value for argument `{label}`: expected finite numbers. Received: {bad} NaN "
                         f"or infinite values of {array.size}")
    if spec is None:
        if array.ndim == 0:
            raise ValueError(f"Invalid value for argument `{label}`: expected arrays with a first axis of "
                             f"samples. Received: a 0-d array")
        return array.astype("float32") if array.dtype == np.float64 else array
    shape = tuple(spec.shape)
    if array.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape[1:], array.shape[1:])):
        hint = ""
        if array.ndim == len(shape) - 1 and all(d is None or d == a for d, a in zip(shape[1:], array.shape)):
            hint = " (one sample still needs the first, batch axis: `x[None]`)"
        raise ValueError(f"Invalid value for argument `{label}`: expected an array of shape {shape} (None: any "
                         f"size; the first axis counts samples). Received: shape {array.shape}{hint}")
    return _cast(array, spec, label)


def _cast(array, spec, label):
    try:
        target = np.dtype(keras.backend.standardize_dtype(spec.dtype))
    except TypeError:  # bfloat16 and other dtypes NumPy lacks: the runtime casts
        return array
    if target.kind in "iu" and array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise TypeError(f"Invalid value for argument `{label}`: the model's input is {target} (e.g. token "
                            f"ids) and the array holds non-integer {array.dtype} values")
    return array.astype(target, copy=False)


def _sample_count(arrays, argument) -> int:
    """The number of samples of `arrays`, the same in all and at least one."""
    sizes = {len(a) for a in keras.tree.flatten(arrays)}
    if len(sizes) != 1:
        raise ValueError(f"Invalid value for argument `{argument}`: its arrays must all have the same number of "
                         f"samples. Received sizes {sorted(sizes)}")
    count = sizes.pop()
    if count == 0:
        raise ValueError(f"Invalid value for argument `{argument}`: expected at least one sample. "
                         "Received: 0 samples")
    return count
