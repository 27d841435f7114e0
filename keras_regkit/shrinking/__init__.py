"""The shrink: gradual pruning of a trained model to exact zeros, as parts.

- `ramps`: how sparse to be at each point of the budget (`CubicRamp`);
- what to cut first, the cut and holding the zeros are the pruning core's
  (`keras_regkit.pruning`: `scores`, `cut`, `hold`);
- `data`: reading what `fit` accepts, as `fit` reads it;
- `guards`: when to stop: the tolerance mode's `ValidationCheck` (and an
  optional label-free `AgreementGuard`);
- `snapshots`: the last good weights and optimizer state, to go back to;
- `state`: what BackupAndRestore needs to resume;
- `result`: `ShrinkResult`, what the shrink did;
- `phase`: `ShrinkPhase`, the callback that composes them; `shrink()` below
  is `fit` plus that callback.
"""

from __future__ import annotations

import keras

from keras_regkit import _validate
from keras_regkit.shrinking import data
from keras_regkit.shrinking.guards import AgreementGuard, ValidationCheck
from keras_regkit.shrinking.phase import ShrinkPhase
from keras_regkit.shrinking.ramps import CubicRamp, SparsitySchedule
from keras_regkit.shrinking.result import ShrinkResult

__all__ = [
    "AgreementGuard", "CubicRamp", "ShrinkResult", "SparsitySchedule", "ValidationCheck",
]


def shrink(
    model: keras.Model,
    x,
    y=None,
    sparsity: float | None = None,
    tolerance: float | None = None,
    validation_data=None,
    epochs: int = 10,
    batch_size: int | None = None,
    sample_weight=None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    callbacks=(),
    verbose: int = 0,
    **phase_kwargs,
) -> ShrinkResult:
    """Makes a trained, compiled model sparse: `fit` with a `ShrinkPhase`
    from epoch 0. Give `sparsity` (a target fraction of exact zeros) or
    `tolerance` (the largest top-1 accuracy drop on unseen data; 0.01 when
    neither is given; on `monitor=` if given, e.g. `monitor="val_mae"` for a
    regression model); see `ShrinkPhase` for how each is met.

    Args:
        model: A compiled, trained model; changed in place.
        x, y: Training data, as for `fit` (arrays, lists or dicts of them,
            a dataset, generator or `keras.utils.PyDataset`). An optional
            `guard=` takes its reference inputs from `x`, unless
            `reference_inputs=` is given.
        sparsity: Target fraction of exact zeros over the covered weights.
        tolerance: How much worse the validation metric may get: top-1
            accuracy (absolute), or `monitor=` (see `ValidationCheck`).
        validation_data: `(x_val, y_val)`, `(x_val, y_val, sample_weight)`
            or a dataset: required in the tolerance mode (its checks),
            optional in the sparsity mode (then `result.baseline` and
            `result.final` report it). Also passed to `fit`, so the logs
            show `val_*` metrics.
        epochs: The budget. Defaults to 10.
        batch_size, sample_weight, steps_per_epoch, validation_steps, callbacks, verbose:
            Passed to `fit`, with the meaning they have there
            (`steps_per_epoch` and `validation_steps` are needed for
            datasets that repeat forever; the guard reads as many
            validation batches as `fit`).
        **phase_kwargs: Any other `ShrinkPhase` argument (`monitor`,
            `mode`, `granularity`, `score`, `learning_rate`, `schedule`,
            `max_sparsity`, `levels`, ...), except `start_epoch` and
            `patience`: `shrink()` starts at once.

    Returns:
        The `ShrinkResult`.

    Raises:
        ValueError: For a bad argument, or the tolerance mode without
            validation data. Whatever ends `fit` early (an exception,
            `KeyboardInterrupt`) re-raises after the weights are back at the
            last good state.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
    ...     keras.layers.Dense(2)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> _ = model.fit(x, y, epochs=20, verbose=0)
    >>> result = rk.shrink(model, x, y, sparsity=0.9, epochs=3)
    >>> f"{result.sparsity:.0%} of the kernels' entries are exact zeros"
    "90% of the kernels' entries are exact zeros"
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError("shrink() needs a compiled model: call model.compile(...) first.")
    _validate.integer("epochs", epochs, minimum=1)
    if batch_size is not None:
        _validate.integer("batch_size", batch_size, minimum=1)
    for name in ("start_epoch", "patience"):
        if name in phase_kwargs:
            raise ValueError(
                f"shrink() starts the shrink at once, so `{name}` has no meaning here; use "
                f"`ShrinkPhase({name}=...)` in your own `fit` to start it later. "
                f"Received: {name}={phase_kwargs[name]!r}")
    if sparsity is None and validation_data is None:
        raise ValueError(
            "shrink() in the tolerance mode needs `validation_data=(x_val, y_val)` (or a dataset) "
            "for its final check; or give `sparsity=` for a target instead. Received: "
            "validation_data=None"
        )
    if steps_per_epoch is None and data.is_infinite(x):
        raise ValueError(
            "shrink() was given training data that repeats forever: pass `steps_per_epoch=` "
            "(training steps per epoch), as to `fit`; the shrink's budget is `epochs` of them."
        )
    if phase_kwargs.get("guard") is not None and "reference_inputs" not in phase_kwargs:
        if data.read_once(x):
            raise ValueError(
                "shrink() with a `guard` samples its reference inputs from `x`, "
                "and `x` is an iterator that can be read only once (fit would then miss those "
                "batches). Pass `reference_inputs=` (some training inputs as arrays), or `x` as "
                f"arrays, a tf.data.Dataset or a keras.utils.PyDataset. Received: x={x!r}"
            )
        phase_kwargs["reference_inputs"] = x
    phase = ShrinkPhase(
        start_epoch=0, sparsity=sparsity, tolerance=tolerance, validation_data=validation_data,
        validation_steps=validation_steps, verbose=verbose, **phase_kwargs)
    with phase:
        # The validation data go to `fit` too, for the logs (History,
        # TensorBoard).
        model.fit(
            x, y, batch_size=batch_size, epochs=epochs, sample_weight=sample_weight,
            validation_data=validation_data, steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            callbacks=[phase, *(callbacks or ())], verbose=verbose,
        )
    return phase.result
