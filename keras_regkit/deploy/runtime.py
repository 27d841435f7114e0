"""A LiteRT or ONNX file run in its runtime: `Runtime`, its timing, and
the check that the runtime or converter a step needs is installed."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from keras_regkit import _validate

FORMATS = {".tflite": "litert", ".onnx": "onnx"}

INSTALL = "pip install 'keras_regkit[export]'"


def require(*modules):
    """Raises an ImportError that says how to install the first of `modules`
    that is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(f"Exporting needs `{name}`, which is not installed: {INSTALL}") from None



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
            raise ImportError(f"Running a .tflite file needs `ai-edge-litert`: {INSTALL}") from None
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
            raise ImportError(f"Running an .onnx file needs `onnxruntime`: {INSTALL}") from None
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

