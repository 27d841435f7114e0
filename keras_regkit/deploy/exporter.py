"""`export`: a model to a LiteRT or ONNX file, checked in its runtime."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import warnings
from typing import Any

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._keras.layers import sublayers
from keras_regkit.deploy.batch_norm import STALE_RMS, stale_batch_norm
from keras_regkit.deploy.calibration import CALIBRATION_SAMPLES, require_representative
from keras_regkit.deploy.inputs import conform
from keras_regkit.deploy.runtime import FORMATS, Runtime, median_call_ms, require
from keras_regkit.deploy.to_litert import export_litert
from keras_regkit.deploy.to_onnx import export_onnx, is_transformer
from keras_regkit.pruning import dead_constants

# Default for `min_agreement`: int8 files of this package's benchmark models
# agree with the float model on 98-100 % of test inputs (README, Deploying);
# below 95 % the file is not the same classifier any more.
MIN_INT8_AGREEMENT = 0.95

INT8_MODES = (False, True, "dynamic", "auto")


def fastest_int8(model: keras.Model, format: str = "litert") -> bool | str:
    """The int8 mode `export(int8="auto")` picks for `model` in the runtime
    of `format`: `"dynamic"` for a transformer (a model with attention
    layers) in LiteRT, `True` (full int8) otherwise.

    Full int8 leaves a transformer's layer norms, softmax and GELU in float,
    so its graph goes in and out of int8 around each of them. In LiteRT that
    file measured 3x slower at batch 1 than dynamic int8 (int8 weights, each
    matrix product's input quantized in the call, run by XNNPACK's kernels);
    in ONNX Runtime full int8 was the faster of the two (6.6x against 4.9x
    the dense float file; benchmarks/bench_deploy_transformer.py, x86 CPU).
    A CNN or MLP gets full int8, the mode integer-only accelerators need.

    Args:
        model: A Keras model.
        format: `"litert"` or `"onnx"`: the runtime the file is for.

    Returns:
        `"dynamic"` or `True`.
    """
    if format not in FORMATS.values():
        raise ValueError(f"Invalid value for argument `format`: expected one of "
                         f"{sorted(set(FORMATS.values()))}. Received: format={format!r}")
    return "dynamic" if format == "litert" and is_transformer(model) else True


class ExportCheckError(ValueError):
    """The exported file, run in its runtime, does not give the Keras model's
    outputs (beyond the tolerance). The file is left in place for inspection."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and, with `check=`, what the runtime gave.

    Attributes:
        path: The file written.
        format: `"litert"` or `"onnx"`.
        int8: `False`, `True` (int8 weights and activations) or `"dynamic"`.
        sparse: Whether zeros were stored sparse where that is smaller.
        file_bytes: Size of the file.
        max_abs_diff: With `check`: the largest absolute difference between
            the runtime's outputs and the (float) Keras model's.
        top1_agreement: With `check`: the fraction of samples whose arg-max
            output is the same in the runtime and in Keras.
        latency_ms: With `check`: median time of one runtime call on one
            sample (its first), in milliseconds, inputs and outputs copied.
    """

    path: str
    format: str
    int8: bool | str
    sparse: bool
    file_bytes: int
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None

    def __str__(self) -> str:
        kind = {False: "float", True: "int8", "dynamic": "int8 dynamic"}[self.int8]
        kind += ", sparse" if self.sparse else ""
        text = f"{self.path}: {self.format} ({kind}), {self.file_bytes / 1024:.1f} KiB"
        if self.max_abs_diff is not None:
            text += (f"; vs Keras: max |diff| {self.max_abs_diff:.3g}, top-1 agreement "
                     f"{self.top1_agreement:.2%}; {self.latency_ms:.3f} ms per call at batch 1")
        return text



def export(
    model: keras.Model,
    path: str | os.PathLike,
    int8: bool | str = False,
    sparse: bool = False,
    representative_data: Any = None,
    check: Any = None,
    atol: float = 1e-4,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> ExportResult:
    """Exports a model to a LiteRT or ONNX file, optionally int8 and with its
    zeros stored sparse, and checks it in the runtime that will run it.

    The format follows the file name: `.tflite` (LiteRT, formerly TensorFlow
    Lite) or `.onnx` (ONNX Runtime). The model itself is not changed.

    Args:
        model: A built Keras model (for instance `shrink`'s, or
            `compact(...).model`). Not one already quantized with
            `model.quantize`: pass the float model and `int8=True`.
        path: The file to write, ending in `.tflite` or `.onnx`, in a folder
            that exists (it is not created, as with `model.save`). An
            existing file is replaced, and only once the new one is
            complete: a refused or failed export leaves it as it was.
        int8: `"auto"`: the fastest int8 mode for the model in its
            runtime (`fastest_int8`: `"dynamic"` for a transformer in
            LiteRT, else `True`).
            `True`: int8 weights and activations. LiteRT: the converter's
            post-training quantization, calibrated on
            `representative_data`. ONNX: ONNX Runtime's static quantization,
            calibrated on `representative_data` too. `"dynamic"`: int8
            weights, activations quantized in each call, no calibration
            (faster than `True` for transformers in LiteRT: `export` warns
            when `True` is asked for one there; see `keras_regkit.deploy`'s
            docstring).
        sparse: Store weights that are mostly exact zeros in a sparse format
            where that makes the file smaller (see `keras_regkit.deploy`'s
            docstring).
            LiteRT refuses it with `int8` (its default CPU delegate cannot
            prepare the file).
        representative_data: Inputs like the model's, from which
            `int8=True` sets the activations' ranges (its first
            `CALIBRATION_SAMPLES` samples; the file is converted from the
            model with dead units' small constants lifted on them, an
            exact rewrite that keeps full int8 from rounding them off:
            `keras_regkit.pruning.dead_constants`; the model's weights are
            put back after); refused with `int8=False`,
            checked but not needed with `"dynamic"`. NumPy
            arrays in the model's input structure: an array for a
            single-input model, else a dict keyed by input name (or a list
            in input order), each of the input's shape (any number of
            samples, at least one), finite. Integer data for a float input
            is cast to the input's dtype, as are integral floats for an
            integer input (token ids). Not a dataset or a generator: take
            arrays from it. Defaults to `check` when that is given.
        check: Inputs to compare the runtime's outputs with the Keras model's
            on, as `representative_data`; float and int8 files alike (also
            `int8="dynamic"`). A float file must match within `atol` times
            the largest output magnitude (at least 1); an int8 file must
            pick the same arg-max class on at least `min_agreement` of the
            samples; NaN or inf in the runtime's outputs fails either.
            Single-output models only, whose outputs on `check` are finite.
        atol: Float files' tolerance, relative to the outputs' scale.
        min_agreement: int8 files' least top-1 agreement, in [0, 1].

    Returns:
        An `ExportResult`: the file's size and, with `check`, the runtime's
        difference from Keras, its top-1 agreement and its latency.

    Raises:
        TypeError, ValueError: a bad argument (inputs not in the model's
            structure, shape or dtype, NaN or inf in them or in the Keras
            model's outputs on `check`), an already quantized model, NaN or
            inf weights with `int8`, an option the format or backend cannot
            do. Nothing is written.
        FileNotFoundError, IsADirectoryError: `path`'s folder does not exist,
            or `path` is a folder.
        ImportError: the runtime or converter is not installed
            (`pip install 'keras_regkit[export]'`).
        ExportCheckError: with `check`, the runtime's outputs differ.

    Example:

    ```python
    small = rk.compact(model).model
    rk.export(small, "model.tflite", int8=True, representative_data=x_train[:200], check=x_test)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Invalid value for argument `model`: expected a keras.Model. "
                        f"Received: model of type {type(model).__name__}")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built yet: build the model first "
                         "(call it on data, or give it a `keras.Input`).")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Invalid value for argument `path`: expected a str or os.PathLike. "
                        f"Received: path={path!r} of type {type(path).__name__}")
    path = os.fspath(path)
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"Invalid value for argument `path`: expected a file name ending in "
                         f"{' or '.join(FORMATS)} (the format follows it). Received: path={path!r}")
    named = isinstance(int8, str) and int8 in ("dynamic", "auto")
    if not (isinstance(int8, (bool, np.bool_)) or named):
        raise TypeError(f"Invalid value for argument `int8`: expected one of "
                        f"{', '.join(map(repr, INT8_MODES))}. Received: int8={int8!r} of type {type(int8).__name__}")
    asked = int8
    int8 = fastest_int8(model, fmt) if int8 == "auto" else int8 if named else bool(int8)
    sparse = _validate.boolean("sparse", sparse)
    atol = _validate.real("atol", atol)
    min_agreement = _validate.real("min_agreement", min_agreement, 0.0, 1.0)
    quantized = sorted({layer.quantization_mode for layer in sublayers(model, include_self=True)
                        if getattr(layer, "quantization_mode", None)})
    if quantized:
        raise ValueError(
            f"Model {model.name!r} is already quantized ({', '.join(quantized)}, by `model.quantize`). "
            "Keras' quantized graph does not convert to LiteRT (its int8 BatchMatMul is refused by the "
            "converter), and `export` quantizes the file itself: pass the float model and `int8=True`.")
    _require_writable(path)
    if representative_data is not None and int8 is False:
        # The user expected an int8 file; `"dynamic"` needs no calibration.
        raise ValueError(
            "`representative_data` calibrates int8 activations: it is used only with `int8=True`. "
            "Received: int8=False with representative_data given (drop it, or pass int8=True)")
    if int8 is True and asked is True and fastest_int8(model, fmt) != int8:
        warnings.warn(
            f"Model {model.name!r} has attention layers: full int8 (`int8=True`) leaves its layer norms, softmax "
            "and GELU in float, and its LiteRT file runs slower than with `int8=\"dynamic\"` (int8 weights, "
            "activations quantized in each call). Pass int8=\"dynamic\" (or "
            "\"auto\") for the fast int8 file.", stacklevel=2)
    if check is not None:
        check = conform(check, model, "check")
    if representative_data is not None:
        representative_data = conform(representative_data, model, "representative_data")
    elif int8 is True:
        representative_data = check
        require_representative(representative_data, asked)
    if int8:
        _require_finite_weights(model)
    if representative_data is not None:
        # One sample: checks what `conform` cannot know of a subclassed model.
        _call(model, keras.tree.map_structure(lambda a: a[:1], representative_data), "representative_data")
    if int8 is True:
        _warn_stale_batch_norm(model, representative_data)
    expected = None
    if check is not None:
        # Before the conversion, which can take a while.
        expected = _keras_outputs(model, check)
        require("ai_edge_litert" if fmt == "litert" else "onnxruntime")

    convert = export_litert if fmt == "litert" else export_onnx
    # Written beside the target, then moved over it: a failed conversion
    # leaves no half-written file, and an existing file as it was. (Keras'
    # LiteRT export takes only a lower-case suffix.)
    with tempfile.TemporaryDirectory(prefix=".keras_regkit_export_", dir=os.path.dirname(os.path.abspath(path))) \
            as scratch:
        written = os.path.join(scratch, "model" + os.path.splitext(path)[1].lower())
        # Full int8 converts the model with dead units' constants lifted (weights put back after).
        lift = contextlib.nullcontext() if int8 is not True else dead_constants.lifted(
            model, keras.tree.map_structure(lambda a: a[:CALIBRATION_SAMPLES], representative_data))
        with lift:
            convert(model, written, int8, sparse, representative_data)
        os.replace(written, path)
    result = ExportResult(path, fmt, int8, sparse, os.path.getsize(path))
    if check is None:
        return result
    return _check(result, check, expected, atol, min_agreement)


def _require_writable(path):
    """Refuses a path whose folder does not exist, as `model.save` does (the
    folder is not created), or that is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Invalid value for argument `path`: its folder {folder!r} does not exist "
                                f"(it is not created, as with `model.save`). Received: path={path!r}")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"Invalid value for argument `path`: its folder {folder!r} is not writable. "
                              f"Received: path={path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Invalid value for argument `path`: it is a folder; expected a file name. "
                                f"Received: path={path!r}")


def _require_finite_weights(model):
    """int8 scales are set from each weight's range: NaN or inf has none
    (ONNX Runtime fails with `AssertionError: scale issue`)."""
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable.value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            raise ValueError(
                f"Model {model.name!r} cannot be quantized to int8: weight {variable.path!r} holds {bad} NaN or "
                f"infinite values of {value.size}, which have no int8 range. Fix or retrain the model.")


def _warn_stale_batch_norm(model, representative_data):
    """Full int8 calibrates on the inference graph: BatchNormalization
    statistics left behind by a fine-tune stretch its ranges."""
    stale = stale_batch_norm(model, representative_data)
    if stale:
        worst = max(stale, key=stale.get)
        warnings.warn(
            f"Model {model.name!r}: {len(stale)} BatchNormalization layers' moving statistics do not describe "
            f"`representative_data` (its inputs, normalized by them, have a root mean square up to "
            f"{stale[worst]:.1f} in layer {worst!r}; 1 where they fit, above {STALE_RMS} here). The float "
            "model's inference and the int8 ranges calibrated on it are off. After a short fine-tune (`shrink`), "
            "re-estimate them first: `keras_regkit.deploy.refresh_batch_norm(model, x_train)`.", stacklevel=3)


def _call(model, inputs, argument):
    try:
        return model(inputs, training=False)
    except Exception as error:  # Keras' message spans lines, with terminal escapes
        message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines())
        raise ValueError(f"Invalid value for argument `{argument}`: model {model.name!r} fails on it: "
                         f"{message.strip()}") from error


def _keras_outputs(model, check):
    """The Keras model's outputs on `check`: one finite array."""
    expected = _call(model, check, "check")
    if isinstance(expected, (list, tuple, dict)):
        raise ValueError(f"`check` compares single-output models; model {model.name!r} has "
                         f"{len(expected)} outputs. Load the file with `Runtime` and compare them yourself.")
    expected = keras.ops.convert_to_numpy(expected)
    finite = np.isfinite(expected)
    if not finite.all():
        raise ValueError(
            f"Invalid value for argument `check`: the Keras model's own outputs on it hold "
            f"{expected.size - np.count_nonzero(finite)} NaN or infinite values of {expected.size} (NaN or inf "
            f"weights?): a file cannot be compared with them. Nothing was written.")
    return expected


def _check(result, check, expected, atol, min_agreement):
    runtime = Runtime(result.path)
    got = runtime(check)
    if got.shape != expected.shape:
        raise ExportCheckError(f"{result.path}: the runtime's output has shape {got.shape}, Keras' "
                               f"{expected.shape}.")
    finite = np.isfinite(got)
    if not finite.all():
        raise ExportCheckError(
            f"{result.path}: the runtime's outputs hold {got.size - np.count_nonzero(finite)} NaN or infinite "
            f"values of {got.size} where Keras' are finite. The file is left in place.")
    max_abs_diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    agreement = float(np.mean(got.reshape(len(got), -1).argmax(-1) == expected.reshape(len(got), -1).argmax(-1)))
    first = keras.tree.map_structure(lambda a: np.asarray(a)[:1], check)
    result = dataclasses.replace(result, max_abs_diff=max_abs_diff, top1_agreement=agreement,
                                 latency_ms=median_call_ms(runtime, first))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not result.int8 and not max_abs_diff <= atol * scale:
        raise ExportCheckError(
            f"{result.path}: the runtime's outputs differ from Keras' by up to {max_abs_diff:.3g}, more than "
            f"atol={atol} x output scale {scale:.3g}. The file is left in place.")
    if result.int8 and agreement < min_agreement:
        raise ExportCheckError(
            f"{result.path}: the int8 file picks the float model's top-1 class on {agreement:.1%} of the "
            f"{len(got)} check samples, below min_agreement={min_agreement}. Calibrate on more "
            "representative inputs, or keep the float file. The file is left in place.")
    return result

