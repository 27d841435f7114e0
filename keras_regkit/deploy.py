"""Deploying: a Keras model to a LiteRT (`.tflite`) or ONNX (`.onnx`) file,
checked in the runtime that will run it.

Keras 3 has the pieces (`model.export(path, format="litert" | "onnx")`,
`model.quantize("int8")`); what they leave to the user, and `export` does:

- **int8 LiteRT.** `model.quantize("int8")` followed by a LiteRT export fails
  in the converter (its int8 `BatchMatMul` is not a `FULLY_CONNECTED` the
  converter accepts), so `int8=True` runs the converter's own post-training
  quantization instead: int8 weights and activations, ranges calibrated on
  `representative_data`, float inputs and outputs.
- **int8 ONNX.** ONNX Runtime's own static quantization (`quantize_static`,
  QDQ format, per-channel int8 weights, uint8 activations calibrated on
  `representative_data`) of the float file. Keras' `model.quantize("int8")`
  exports to ONNX too, but in Keras 3.15 it quantizes only `Dense`-like
  layers (a CNN's convolutions stay float) and its graph, which quantizes
  activations on every call, ran slower in ONNX Runtime than the QDQ one.
- **Dynamic int8** (`int8="dynamic"`): int8 weights, activations quantized
  on the fly in each layer (LiteRT's dynamic-range quantization, ONNX
  Runtime's `quantize_dynamic`); no calibration data. On a small BERT in
  LiteRT it was faster than float where full int8 was 2.4x slower (full
  int8 leaves layer norms, softmax and GELU in float, so the graph goes in
  and out of int8 between many delegate partitions).
- **Zeros stored sparse** (`sparse=True`). No converter stores unstructured
  zeros compactly by default: a 95 % sparse model's file is as large as the
  dense one. LiteRT: the converter's `EXPERIMENTAL_SPARSITY` optimization
  (passed through `model.export`'s converter arguments) stores such weights
  sparse and adds a `DENSIFY` op; ONNX: weights for which it is smaller are
  moved to the graph's `sparse_initializer` (COO, int64 indices). ONNX
  Runtime expands them to dense when the session is created, and LiteRT
  all but the weights its sparse `FULLY_CONNECTED` kernel reads in 1x4
  blocks: the file is smaller, the memory and the arithmetic mostly not.
- **The check** (`check=x`): the file is loaded in the deployment runtime
  (`ai_edge_litert`'s interpreter, `onnxruntime`) and its outputs compared
  with the Keras model's.

Only the TensorFlow backend is supported for LiteRT files with `int8` or
`sparse` (they are options of TensorFlow's converter).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any

import keras
import numpy as np

from keras_regkit import _validate

FORMATS = {".tflite": "litert", ".onnx": "onnx"}

# The converter calibrates int8 ranges on this many samples at most (its
# documentation suggests a few hundred); more only slows the conversion.
CALIBRATION_SAMPLES = 200

# Default for `min_agreement`: int8 files of this package's benchmark models
# agree with the float model on 98-100 % of test inputs (README, Deploying);
# below 95 % the file is not the same classifier any more.
MIN_INT8_AGREEMENT = 0.95

_INSTALL = "pip install 'keras_regkit[export]'"


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
            (faster than `True` for transformers in LiteRT: see the module
            docstring).
        sparse: Store weights that are mostly exact zeros in a sparse format
            where that makes the file smaller (see the module docstring).
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
    quantized = sorted({layer.quantization_mode for layer in model._flatten_layers()
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
        _batch_size(check, "check")
        _require("ai_edge_litert" if fmt == "litert" else "onnxruntime")

    if fmt == "litert":
        _export_litert(model, path, int8, sparse, representative_data)
    else:
        _export_onnx(model, path, int8, sparse, representative_data)
    result = ExportResult(path, fmt, int8, sparse, os.path.getsize(path))
    if check is None:
        return result
    return _check(model, result, check, atol, min_agreement)


def _export_litert(model, path, int8, sparse, representative_data):
    if keras.backend.backend() != "tensorflow" and (int8 or sparse):
        raise ValueError(
            f"`int8` and `sparse=True` for LiteRT are options of TensorFlow's converter: they need "
            f"the TensorFlow backend (KERAS_BACKEND=tensorflow). Received: backend "
            f"{keras.backend.backend()!r}, int8={int8!r}, sparse={sparse}")
    if int8 and sparse:
        # Measured with ai-edge-litert 2.3: the interpreter's default XNNPACK
        # delegate fails to prepare a sparse int8 FULLY_CONNECTED, and without
        # the delegate the file runs 8x slower than the dense int8 one.
        raise ValueError(
            "A LiteRT file cannot be int8 and sparse: LiteRT's default CPU path (the XNNPACK delegate) "
            "fails to prepare sparse int8 layers ('failed to delegate FULLY_CONNECTED'). Use int8 "
            "(about 4x smaller than float) or sparse=True (float, smaller at high sparsity).")
    options = {}
    if int8 or sparse:
        import tensorflow as tf

        options["optimizations"] = []
        if sparse:
            options["optimizations"].append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        if int8:
            # DEFAULT without a representative dataset is dynamic-range quantization.
            options["optimizations"].append(tf.lite.Optimize.DEFAULT)
        if int8 is True:
            _require_representative(representative_data)
            options["representative_dataset"] = _calibration(representative_data)
    model.export(path, format="litert", verbose=False, **options)


def _require_representative(data):
    if data is None:
        raise ValueError(
            "`int8=True` needs `representative_data=` (or `check=`): inputs like the model's, from which "
            "the int8 ranges of the activations are set (a few hundred training samples). "
            "Received: representative_data=None")


def _calibration(data):
    """The converter's representative dataset: one sample a call, inputs in
    the model's structure (a list, or a dict keyed by input name)."""
    count = min(CALIBRATION_SAMPLES, _batch_size(data, "representative_data"))
    # float64 (NumPy's default) would not match the models' float32 inputs.
    data = keras.tree.map_structure(
        lambda a: np.asarray(a, "float32") if np.asarray(a).dtype == np.float64 else np.asarray(a), data)

    def samples():
        for i in range(count):
            sample = keras.tree.map_structure(lambda a: a[i:i + 1], data)
            yield sample if isinstance(sample, dict) else list(keras.tree.flatten(sample))

    return samples


def _batch_size(data, name: str) -> int:
    sizes = {len(a) for a in keras.tree.flatten(data)}
    if len(sizes) != 1:
        raise ValueError(f"Invalid value for argument `{name}`: its arrays must all have the same number of "
                         f"samples. Received sizes {sorted(sizes)}")
    return sizes.pop()


def _export_onnx(model, path, int8, sparse, representative_data):
    # Keras' ONNX export goes through tf2onnx under TensorFlow.
    _require("onnx", *(["tf2onnx"] if keras.backend.backend() == "tensorflow" else []))
    if int8:
        _require("onnxruntime")  # its quantization tools
    if int8 is True:
        _require_representative(representative_data)
    if not getattr(model, "_called", True):
        # Keras' ONNX export refuses a model that has never been called.
        model(_zeros_like_inputs(model), training=False)
    model.export(path, format="onnx", verbose=False)
    if int8:
        _quantize_onnx(path, representative_data if int8 is True else None)
    if sparse:
        store_zeros_sparse(path)


def _quantize_onnx(path, representative_data):
    """ONNX Runtime's int8 quantization of the float file, in place: static
    (calibrated) with `representative_data`, dynamic without."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if representative_data is None:
        quantize_dynamic(path, path, weight_type=QuantType.QInt8)
        return

    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    batches = _calibration(representative_data)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._samples = batches()

        def get_next(self):
            sample = next(self._samples, None)
            if sample is None or isinstance(sample, dict):
                return sample
            return dict(zip(names, sample))

    with tempfile.TemporaryDirectory() as folder:
        # The pre-processing (shape inference, constant folding) ONNX Runtime
        # asks for before quantizing; its symbolic part needs sympy: skipped.
        prepared = os.path.join(folder, "prepared.onnx")
        quant_pre_process(path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _zeros_like_inputs(model):
    try:
        spec = model.input
    except (AttributeError, ValueError):  # a Sequential never called has only `inputs`
        spec = getattr(model, "inputs", None)
        spec = spec[0] if spec and len(spec) == 1 else spec
    if spec is None or (isinstance(spec, (list, tuple, dict)) and not spec):
        raise ValueError(f"Model {model.name!r} has no known inputs (a subclassed model): call it once on "
                         "data before exporting it to ONNX.")
    return keras.tree.map_structure(
        lambda t: np.zeros([1 if d is None else d for d in t.shape], t.dtype), spec)


def store_zeros_sparse(path: str | os.PathLike) -> int:
    """Moves the weights of an ONNX file that are smaller stored sparse (COO:
    the non-zero values and their int64 flat indices) to the graph's
    `sparse_initializer`, in place. ONNX Runtime expands them to dense when it
    loads the file. Returns how many weights were moved.

    A weight moves when `nnz * (itemsize + 8) < size * itemsize`: at float32
    above 67 % zeros, at int8 above 89 %.
    """
    _require("onnx")
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(os.fspath(path))
    graph = graph_model.graph
    kept, moved = [], []
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        nonzero = np.flatnonzero(array)
        if array.ndim >= 2 and nonzero.size * (array.itemsize + 8) < array.size * array.itemsize:
            values = numpy_helper.from_array(array.reshape(-1)[nonzero], initializer.name)
            indices = numpy_helper.from_array(nonzero.astype(np.int64), initializer.name + "_indices")
            moved.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
        else:
            kept.append(initializer)
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        graph.sparse_initializer.extend(moved)
        onnx.save(graph_model, os.fspath(path))
    return len(moved)


def _require(*modules):
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(f"Exporting needs `{name}`, which is not installed: {_INSTALL}") from None


class Runtime:
    """A LiteRT or ONNX file loaded in its runtime, called like a model on
    NumPy inputs: `Runtime(path)(x) -> np.ndarray` (single-output models).

    Args:
        path: A `.tflite` or `.onnx` file.
        num_threads: CPU threads the runtime may use (None: its default).

    Inputs are an array (single-input models) or a dict keyed by the
    model's input names; they are cast to the file's input dtypes, and any
    batch size is accepted.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        path = os.fspath(path)
        self.format = FORMATS.get(os.path.splitext(path)[1].lower())
        if self.format is None:
            raise ValueError(f"Invalid value for argument `path`: expected a file name ending in "
                             f"{' or '.join(FORMATS)}. Received: path={path!r}")
        if num_threads is not None:
            num_threads = _validate.integer("num_threads", num_threads, 1)
        if self.format == "litert":
            self._load_litert(path, num_threads)
        else:
            self._load_onnx(path, num_threads)

    def _load_litert(self, path, num_threads):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError(f"Running a .tflite file needs `ai-edge-litert`: {_INSTALL}") from None
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ValueError(f"{path} has {len(signatures)} signatures ({sorted(signatures)}); expected one.")
        runner = self._interpreter.get_signature_runner(next(iter(signatures)))
        details = runner.get_input_details()
        self.input_names = list(details)
        self._inputs = {name: (d["index"], d["dtype"]) for name, d in details.items()}
        outputs = runner.get_output_details()
        if len(outputs) != 1:
            raise ValueError(f"{path} has {len(outputs)} outputs; Runtime handles single-output models.")
        self._output = next(iter(outputs.values()))["index"]
        self._shapes = {}

    def _load_onnx(self, path, num_threads):
        try:
            import onnxruntime
        except ImportError:
            raise ImportError(f"Running an .onnx file needs `onnxruntime`: {_INSTALL}") from None
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        types = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
                 "tensor(bool)": np.bool_, "tensor(double)": np.float64}
        self.input_names = [i.name for i in self._session.get_inputs()]
        self._inputs = {i.name: (i.name, types.get(i.type, np.float32)) for i in self._session.get_inputs()}
        if len(self._session.get_outputs()) != 1:
            raise ValueError(f"{path} has {len(self._session.get_outputs())} outputs; Runtime handles "
                             "single-output models.")

    def _feed(self, x) -> dict:
        if isinstance(x, dict):
            missing = sorted(set(self.input_names) - set(x))
            if missing:
                raise ValueError(f"Inputs {missing} are missing. The file's inputs are {self.input_names}; "
                                 f"received keys {sorted(x)}")
            return {name: np.asarray(x[name]) for name in self.input_names}
        if len(self.input_names) != 1:
            raise ValueError(f"The file has {len(self.input_names)} inputs ({self.input_names}): pass a dict "
                             "keyed by these names.")
        return {self.input_names[0]: np.asarray(x)}

    def __call__(self, x) -> np.ndarray:
        feed = self._feed(x)
        if self.format == "onnx":
            feed = {name: value.astype(self._inputs[name][1], copy=False) for name, value in feed.items()}
            return self._session.run(None, feed)[0]
        interpreter = self._interpreter
        shapes = {name: value.shape for name, value in feed.items()}
        if shapes != self._shapes:
            # Resizing re-plans the interpreter's memory: only when the shape changes.
            for name, shape in shapes.items():
                interpreter.resize_tensor_input(self._inputs[name][0], shape)
            interpreter.allocate_tensors()
            self._shapes = shapes
        for name, value in feed.items():
            index, dtype = self._inputs[name]
            interpreter.set_tensor(index, value.astype(dtype, copy=False))
        interpreter.invoke()
        return interpreter.get_tensor(self._output)


def median_call_ms(runtime, x, calls: int = 50) -> float:
    """Median wall time of `runtime(x)`, in milliseconds, after one warm-up call."""
    runtime(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        runtime(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
