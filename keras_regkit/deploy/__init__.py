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
  with the Keras model's; NaN or inf outputs fail it.
- **Inputs checked first.** `check` and `representative_data` are checked
  against the model's inputs (structure, names, feature shape, dtype, NaN)
  before anything is converted: the converters and runtimes fail on wrong
  data deep inside, with messages about their own tensors. The file is
  written beside `path` and moved over it once complete.

- **BatchNormalization after a fine-tune.** Full int8 is calibrated on the
  model's inference graph, which normalizes with the moving statistics. A
  short fine-tune (the shrink's) leaves them describing the network before
  it (MobileNetV2 keeps 0.999 of them per step): `export(int8=True)` warns
  when they are off on `representative_data`, and `refresh_batch_norm`
  re-estimates them.

Only the TensorFlow backend is supported for LiteRT files with `int8` or
`sparse` (they are options of TensorFlow's converter).
"""

from keras_regkit.deploy.batch_norm import refresh_batch_norm, stale_batch_norm
from keras_regkit.deploy.calibration import CALIBRATION_SAMPLES
from keras_regkit.deploy.exporter import MIN_INT8_AGREEMENT, ExportCheckError, ExportResult, export, fastest_int8
from keras_regkit.deploy.runtime import FORMATS, Runtime, median_call_ms
from keras_regkit.deploy.to_onnx import store_zeros_sparse

__all__ = ["CALIBRATION_SAMPLES", "FORMATS", "MIN_INT8_AGREEMENT", "ExportCheckError", "ExportResult", "Runtime",
           "export", "fastest_int8", "median_call_ms", "refresh_batch_norm", "stale_batch_norm",
           "store_zeros_sparse"]
