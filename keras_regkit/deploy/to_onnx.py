"""A Keras model to an ONNX file: Keras' export, its graph tidied (each
weight stored once, layer norms as one op) and, for a transformer, ONNX
Runtime's own transformer fusions; then ONNX Runtime's int8 quantization and
the zeros moved to sparse initializers."""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np

from keras_regkit._keras.export import was_called
from keras_regkit._keras.layers import sublayers
from keras_regkit.deploy.calibration import calibration
from keras_regkit.deploy.onnx_graph import (LAYER_NORM_OPSET, drop_unused_initializers, fold_constant_shapes,
                                            fuse_layer_norms, unconverted_ops)
from keras_regkit.deploy.runtime import require


def export_onnx(model, path, int8, sparse, representative_data):
    """Writes `model` to the ONNX file `path` (`int8` and `sparse` as in
    `export`)."""
    # Keras' ONNX export goes through tf2onnx under TensorFlow.
    require("onnx", *(["tf2onnx"] if keras.backend.backend() == "tensorflow" else []))
    if int8:
        require("onnxruntime")  # its quantization tools
    if not was_called(model):
        # Keras' ONNX export refuses a model that has never been called.
        model(zeros_like_inputs(model), training=False)
    with tensors_as_constants(model):
        model.export(path, format="onnx", verbose=False, opset_version=LAYER_NORM_OPSET)
    tidy_onnx(path, model.name)
    if is_transformer(model) and int8 is not True:
        # Not before static quantization: its calibration loses the ranges of
        # tensors next to the fused ops ("Unable to get valid quantization scale").
        fuse_for_onnx_runtime(path)
    if int8:
        quantize_onnx(path, representative_data if int8 is True else None)
    if sparse:
        store_zeros_sparse(path)


@contextlib.contextmanager
def tensors_as_constants(model):
    """Under TensorFlow, the tensors layers hold outside their variables (a
    `Normalization`'s mean and variance, computed when it is built) as
    NumPy arrays while Keras exports `model`: tf2onnx leaves such a tensor,
    captured by the traced function, as an input of the ONNX graph that no
    caller feeds (EfficientNet's file then asked for three inputs), where an
    array is traced as a constant."""
    swapped = []
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            for layer in sublayers(model):
                for name, value in list(vars(layer).items()):
                    if tf.is_tensor(value) and not isinstance(value, tf.Variable) and hasattr(value, "numpy"):
                        swapped.append((layer, name, value))
                        setattr(layer, name, value.numpy())
        yield
    finally:
        for layer, name, value in swapped:
            setattr(layer, name, value)


def is_transformer(model) -> bool:
    """Whether `model` holds attention layers (ONNX Runtime's transformer
    fusions apply)."""
    return any(isinstance(layer, keras.layers.MultiHeadAttention) for layer in sublayers(model))


def tidy_onnx(path, model_name):
    """Each weight stored once and layer norms as one op, in place (see
    `onnx_graph`); refuses a graph with ops ONNX does not define."""
    import onnx

    graph_model = onnx.load(path)
    graph = graph_model.graph
    unknown = unconverted_ops(graph)
    if unknown:
        ops = ", ".join(f"{op} (in {node!r})" for op, node in unknown.items())
        hint = " Exact GELU is `Erfc` here: use `gelu` with `approximate=True`." if "Erfc" in unknown else ""
        raise ValueError(
            f"Model {model_name!r} cannot be written to ONNX: Keras' ONNX export (tf2onnx) has no ONNX form for "
            f"the TensorFlow ops {ops}, and ONNX Runtime cannot load a file holding them.{hint} Export it to "
            "LiteRT (`.tflite`), or change those layers. Nothing was written.")
    fold_constant_shapes(graph)
    opset = max((o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset >= LAYER_NORM_OPSET:
        fuse_layer_norms(graph)
    drop_unused_initializers(graph)
    onnx.save(graph_model, path)


def fuse_for_onnx_runtime(path):
    """ONNX Runtime's transformer optimizer on the file, in place: residual
    additions fused with the layer norms after them (`SkipLayerNormalization`),
    GELUs (`FastGelu`/`Gelu`), and attention where its pattern matches.
    The fused ops are ONNX Runtime's (`com.microsoft` domain): the file then
    runs in ONNX Runtime only. Nothing is changed when nothing fuses."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    # It logs the model's producer ("tf2onnx") as unexpected, and each fusion.
    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # opt_level=0: its Python fusions only; the session optimizes the rest when loading.
        optimized = optimize_model(path, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    finally:
        logger.setLevel(level)
    if any(optimized.get_fused_operator_statistics().values()):
        optimized.save_model_to_file(path)


def quantize_onnx(path, representative_data):
    """ONNX Runtime's int8 quantization of the float file, in place: static
    (calibrated) with `representative_data`, dynamic without."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The tensors after ONNX Runtime's fused ops have no inferred type: float.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if representative_data is None:
        quantize_dynamic(path, path, weight_type=QuantType.QInt8, extra_options=options)
        return

    names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
    batches = calibration(representative_data)

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
        # Weights on 7 bits (`reduce_range`): x86 CPUs without VNNI multiply
        # uint8 activations by int8 weights in pairs summed into int16, which
        # saturates with full-range per-channel weights (ONNX Runtime's own
        # advice). Measured on such a CPU (AVX2): a compacted CNN's top-1 agreement
        # with Keras went from 0.91 to 0.99 (tests/test_export.py).
        quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options=options)


def zeros_like_inputs(model):
    """One sample of zeros in the structure of `model`'s inputs."""
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
    require("onnx")
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

