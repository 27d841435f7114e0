"""BatchNormalization statistics that describe the model as it is now.

A fine-tune (the shrink's, or any short `fit`) moves the weights faster
than BatchNormalization's moving statistics follow them: MobileNetV2's
layers keep 0.999 of their old statistics per step, so after the shrink's
few hundred steps at three times the learning rate most of each moving
mean and variance still describes the network before its units were cut.
In inference the layers then no longer normalize: measured on a unit-shrunk
MobileNetV2 (docs/benchmarks.md), the deep layers' outputs had standard
deviations up to 12 instead of 1, which lost the float model most of its
accuracy and stretched the ranges the int8 converter calibrates.
`refresh_batch_norm` re-estimates the statistics on training inputs;
`stale_batch_norm` measures how far they are off (`export(int8=True)`
warns with it).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_regkit import _processes, _validate
from keras_regkit._keras.layers import sublayers
from keras_regkit.deploy.inputs import conform
from keras_regkit.pruning.calibration import wrapping_calls

# A layer whose inputs, normalized by its moving statistics, have a root
# mean square above this on the representative data is stale (normalized
# outputs have 1; the shrunk MobileNetV2 above had up to 12).
STALE_RMS = 3.0


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers that update their statistics
    in training (not frozen)."""
    return [layer for layer in sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)
            and layer.trainable]


def refresh_batch_norm(model: keras.Model, x, batch_size: int = 256) -> int:
    """Re-estimates the moving mean and variance of every BatchNormalization
    layer from `x`, the average of its batch statistics over `x`'s batches
    (weighted by their sizes),
    with every other layer in inference mode (dropout off); nothing else
    changes (no weight is trained). Over several processes (multi-process
    JAX), each passes its own `x` and every process keeps the statistics of
    all of them.

    Call it after a fine-tune with few steps (a pruning fine-tune, your
    own `fit` with a `ShrinkPhase`) and before `compact` and `export`: the
    model's inference outputs then come from the statistics of the network
    that was trained. `shrink()` calls it at its end.

    Args:
        model: A built model; changed in place.
        x: Training inputs, NumPy arrays in the model's input structure (as
            `export`'s `representative_data`): a few hundred to a few
            thousand samples.
        batch_size: Samples per forward pass. Larger batches estimate each
            variance with less bias; at least 2.

    Returns:
        The number of layers refreshed (0: the model has none, or all
        are frozen).

    Raises:
        TypeError, ValueError: `x` not in the model's input structure, or
            `batch_size` below 2. The model is left as it was, also when a
            forward pass fails.

    Example:

    ```python
    model.fit(x_train, y_train, epochs=8, callbacks=[rk.ShrinkPhase(start_epoch=6, sparsity=0.5)])
    rk.deploy.refresh_batch_norm(model, x_train)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Invalid value for argument `model`: expected a keras.Model. "
                        f"Received: model of type {type(model).__name__}")
    batch_size = _validate.integer("batch_size", batch_size, 2)
    x = conform(x, model, "x")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    count = len(keras.tree.flatten(x)[0])
    kept = [(layer.momentum, [keras.ops.convert_to_numpy(v) for v in (layer.moving_mean, layer.moving_variance)])
            for layer in layers]

    def batch_statistics(layer, call, inputs, *args, **kwargs):
        return call(inputs, *args, **{**kwargs, "training": True})

    try:
        # Every other layer in inference mode (dropout and stochastic depth
        # off), as the statistics will be used.
        with wrapping_calls(layers, batch_statistics):
            for start in range(0, count, batch_size):
                # new = old * m + batch * (1 - m) with m = start / (start +
                # n): the mean of the batches' statistics so far, weighted by
                # their samples (a short last batch counts for what it holds).
                for layer in layers:
                    layer.momentum = start / min(start + batch_size, count)
                model(keras.tree.map_structure(lambda a: a[start:start + batch_size], x), training=False)
        if _processes.process_count() > 1:
            _average_over_processes(layers, count)
    except BaseException:
        for layer, (_, (mean, variance)) in zip(layers, kept):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, (momentum, _) in zip(layers, kept):
            layer.momentum = momentum
    return len(layers)


def _average_over_processes(layers, count: int) -> None:
    """Each process saw only its own samples: every process keeps the
    statistics of all of them (weighted by samples), so replicas stay equal."""
    total = _processes.global_sum([count])[0]
    for layer in layers:
        for variable in (layer.moving_mean, layer.moving_variance):
            local = keras.ops.convert_to_numpy(variable).astype("float64") * count
            variable.assign((_processes.global_sum(local) / total).astype(variable.dtype))


def stale_batch_norm(model: keras.Model, x) -> dict[str, float]:
    """How far each BatchNormalization layer's moving statistics are from
    its inputs on `x`: the root mean square of the inputs normalized by
    them, over the channels that vary (1 where they describe `x`).

    Args:
        model: A functional or Sequential model (others: an empty dict).
        x: Inputs as `conform` returns them.

    Returns:
        `{layer name: RMS}` for the layers above `STALE_RMS`.
    """
    layers = [layer for layer in batch_norm_layers(model) if layer.axis in (-1, len(layer.input.shape) - 1)] \
        if getattr(model, "inputs", None) else []
    try:
        probe = keras.Model(model.inputs, [layer.input for layer in layers]) if layers else None
    except (ValueError, AttributeError):  # a layer called more than once, or nested: no single input
        return {}
    if probe is None:
        return {}
    inputs = probe.predict(x, batch_size=256, verbose=0)
    stale = {}
    for layer, values in zip(layers, inputs if len(layers) > 1 else [inputs]):
        values = np.asarray(values, np.float64).reshape(-1, values.shape[-1])
        varies = values.std(0) > 0  # a cut unit's channel is constant
        if not varies.any():
            continue
        mean = keras.ops.convert_to_numpy(layer.moving_mean)[varies]
        variance = keras.ops.convert_to_numpy(layer.moving_variance)[varies]
        rms = float(np.sqrt(np.mean((values[:, varies] - mean) ** 2 / (variance + layer.epsilon))))
        if rms > STALE_RMS:
            stale[layer.name] = rms
    return stale
