"""`export`: a model to a LiteRT or ONNX file, checked in its runtime."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._keras.layers import sublayers
from keras_regkit.deploy.calibration import sample_count
from keras_regkit.deploy.runtime import FORMATS, Runtime, median_call_ms, require
from keras_regkit.deploy.to_litert import export_litert
from keras_regkit.deploy.to_onnx import export_onnx

# Default for `min_agreement`: int8 files of this package's benchmark models
# agree with the float model on 98-100 % of test inputs (README, Deploying);
# below 95 % the file is not the same classifier any more.
MIN_INT8_AGREEMENT = 0.95


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
        path: The file to write, ending in `.tflite` or `.onnx`.
        int8: `True`: int8 weights and activations. LiteRT: the converter's
            post-training quantization, calibrated on
            `representative_data`. ONNX: ONNX Runtime's static quantization,
            calibrated on `representative_data` too. `"dynamic"`: int8
            weights, activations quantized in each call, no calibration
            (faster than `True` for transformers in LiteRT: see
            `keras_regkit.deploy`'s docstring).
        sparse: Store weights that are mostly exact zeros in a sparse format
            where that makes the file smaller (see `keras_regkit.deploy`'s
            docstring).
            LiteRT refuses it with `int8` (its default CPU delegate cannot
            prepare the file).
        representative_data: Inputs like the model's (an array, or a dict or
            list of arrays), from which `int8=True` sets the activations'
            ranges (its first `CALIBRATION_SAMPLES` samples).
            Defaults to `check` when that is given.
        check: Inputs to compare the runtime's outputs with the Keras model's
            on. A float file must match within `atol` times the largest
            output magnitude (at least 1); an int8 file must pick the same
            arg-max class on at least `min_agreement` of the samples.
            Single-output models only.
        atol: Float files' tolerance, relative to the outputs' scale.
        min_agreement: int8 files' least top-1 agreement, in [0, 1].

    Returns:
        An `ExportResult`: the file's size and, with `check`, the runtime's
        difference from Keras, its top-1 agreement and its latency.

    Raises:
        ValueError: a bad argument, an already quantized model, an option the
            format or backend cannot do.
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
    dynamic = isinstance(int8, str) and int8 == "dynamic"
    if not (isinstance(int8, (bool, np.bool_)) or dynamic):
        raise TypeError(f"Invalid value for argument `int8`: expected True, False or \"dynamic\". "
                        f"Received: int8={int8!r} of type {type(int8).__name__}")
    int8 = "dynamic" if dynamic else bool(int8)
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
    if representative_data is None:
        representative_data = check
    if check is not None:
        # Before the conversion, which can take a while.
        sample_count(check, "check")
        require("ai_edge_litert" if fmt == "litert" else "onnxruntime")

    if fmt == "litert":
        export_litert(model, path, int8, sparse, representative_data)
    else:
        export_onnx(model, path, int8, sparse, representative_data)
    result = ExportResult(path, fmt, int8, sparse, os.path.getsize(path))
    if check is None:
        return result
    return _check(model, result, check, atol, min_agreement)



def _check(model, result, check, atol, min_agreement):
    expected = model(check, training=False)
    if isinstance(expected, (list, tuple, dict)):
        raise ValueError(f"`check` compares single-output models; model {model.name!r} has "
                         f"{len(expected)} outputs. Load the file with `Runtime` and compare them yourself.")
    expected = keras.ops.convert_to_numpy(expected)
    runtime = Runtime(result.path)
    got = runtime(check)
    if got.shape != expected.shape:
        raise ExportCheckError(f"{result.path}: the runtime's output has shape {got.shape}, Keras' "
                               f"{expected.shape}.")
    max_abs_diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    agreement = float(np.mean(got.reshape(len(got), -1).argmax(-1) == expected.reshape(len(got), -1).argmax(-1)))
    first = keras.tree.map_structure(lambda a: np.asarray(a)[:1], check)
    result = dataclasses.replace(result, max_abs_diff=max_abs_diff, top1_agreement=agreement,
                                 latency_ms=median_call_ms(runtime, first))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not result.int8 and max_abs_diff > atol * scale:
        raise ExportCheckError(
            f"{result.path}: the runtime's outputs differ from Keras' by up to {max_abs_diff:.3g}, more than "
            f"atol={atol} x output scale {scale:.3g}. The file is left in place.")
    if result.int8 and agreement < min_agreement:
        raise ExportCheckError(
            f"{result.path}: the int8 file picks the float model's top-1 class on {agreement:.1%} of the "
            f"{len(got)} check samples, below min_agreement={min_agreement}. Calibrate on more "
            "representative inputs, or keep the float file. The file is left in place.")
    return result

