"""A Keras model to a LiteRT file, with TensorFlow's converter's options for
int8 and sparse weights."""

from __future__ import annotations

import keras

from keras_regkit.deploy.calibration import calibration


def export_litert(model, path, int8, sparse, representative_data):
    """Writes `model` to the LiteRT file `path` (`int8` and `sparse` as in
    `export`)."""
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
            options["representative_dataset"] = calibration(representative_data)
    model.export(path, format="litert", verbose=False, **options)

