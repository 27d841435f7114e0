"""The shrink: gradual pruning of a trained model to exact zeros, as parts.

- `callback`: `ShrinkPhase`, the callback: the fit hooks, the cuts and the
  held zeros, snapshots and rollbacks, resuming; it asks a policy where to go.
  `shrink()` below is `fit` plus that callback.
- `policies`: where to go: `SparsityTarget` (a sparsity you choose, along a
  ramp from `ramps`) and `ToleranceClimb` (levels while a check holds; its
  rules in `climb`, a state machine over the plain data of `decisions`), or
  your own `ShrinkPolicy`;
- `guards`: the verdict of a check (`ValidationCheck`, with an optional
  `AgreementGuard`); `evaluation`: predictions, hits and metrics on the
  validation data; `data`: reading what `fit` accepts, as `fit` reads it;
- `trigger`: when to start (an epoch, or a `Plateau`); `learning_rate`: the
  rate during the shrink; `snapshots`, `state`: the last good state, and
  what BackupAndRestore needs to resume; `result`: `ShrinkResult`.

What to cut first, the cut and holding the zeros are the pruning core's
(`keras_regkit.pruning`).
"""

from __future__ import annotations

import keras

from keras_regkit import _validate
from keras_regkit.quantization.training import shrink_representative_data
from keras_regkit.pruning import granularity as granularity_lib
from keras_regkit.shrinking import data
from keras_regkit.shrinking import distill as distill_lib
from keras_regkit.shrinking.callback import ShrinkPhase
from keras_regkit.shrinking.decisions import Action, Observation, Verdict
from keras_regkit.shrinking.guards import AgreementGuard, ValidationCheck, checked_guard
from keras_regkit.shrinking.policies import ShrinkPolicy, SparsityTarget, ToleranceClimb
from keras_regkit.shrinking.ramps import CubicRamp, SparsitySchedule
from keras_regkit.shrinking.result import ShrinkResult
from keras_regkit.shrinking.trigger import Plateau

__all__ = [
    "Action", "AgreementGuard", "CubicRamp", "Observation", "Plateau", "ShrinkPolicy", "ShrinkResult",
    "SparsitySchedule", "SparsityTarget", "ToleranceClimb", "ValidationCheck", "Verdict",
]

# `shrink()`'s keywords that configure the policy, by the policy that takes them.
_POLICY_ARGS = {"cut_every", "learning_rate", "score"}
_TOLERANCE_ARGS = {"mode", "guard", "levels", "max_sparsity"}
_SPARSITY_ARGS = {"schedule"}
_PHASE_ARGS = {"policy", "monitor", "granularity", "layers", "weights", "backup_dir", "distill", "int8", "representative_data"}


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
        **phase_kwargs: `ShrinkPhase`'s `policy`, `monitor`,
            `granularity`, `layers`, `backup_dir`, `int8` and
            `representative_data` (the first samples of `x` by default,
            when `x` is arrays); `weights` (the weight
            kinds covered, as in `prune`); and the policy's settings, which
            build it: `cut_every`, `learning_rate`, `score` (both modes),
            `schedule` (`SparsityTarget`), `mode`, `guard`, `levels`,
            `max_sparsity` (`ToleranceClimb`). Not `start_epoch`:
            `shrink()` starts at once. `distill` (`ShrinkPhase`'s): the
            teacher term from the starting model, in both modes; by
            default (`"auto"`) on in the sparsity mode at 97 % or more.

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
                "`ShrinkPhase(start_epoch=...)` (an epoch, or a `Plateau(patience=...)`) in your own "
                f"`fit` to start it later. Received: {name}={phase_kwargs[name]!r}")
    unknown = sorted(set(phase_kwargs) - _PHASE_ARGS - _POLICY_ARGS - _TOLERANCE_ARGS - _SPARSITY_ARGS)
    if unknown:
        raise TypeError(
            f"shrink() got unexpected keyword arguments {unknown}. Valid: "
            f"{sorted(_PHASE_ARGS | _POLICY_ARGS | _TOLERANCE_ARGS | _SPARSITY_ARGS)}")
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
    guard = checked_guard(phase_kwargs.get("guard"))
    if guard is not None and guard.inputs is None:
        if data.read_once(x):
            raise ValueError(
                "shrink() with a `guard` samples its reference inputs from `x`, "
                "and `x` is an iterator that can be read only once (fit would then miss those "
                "batches). Give the guard its own (`AgreementGuard(..., inputs=some_x)`), or pass `x` as "
                f"arrays, a tf.data.Dataset or a keras.utils.PyDataset. Received: x={x!r}"
            )
        guard.inputs = x
    if validation_steps is not None:
        _validate.integer("validation_steps", validation_steps, minimum=1)
    if phase_kwargs.get("int8", False) is not False or "representative_data" in phase_kwargs:
        phase_kwargs["representative_data"] = shrink_representative_data(
            model, phase_kwargs.get("int8", False), phase_kwargs.get("representative_data"), x)
    phase = ShrinkPhase(
        start_epoch=0, verbose=verbose, validation_data=data.limit(validation_data, validation_steps),
        **_phase_arguments(sparsity, tolerance, phase_kwargs))
    phase.statistics.refresh_from(x)  # BatchNormalization's statistics re-estimated on `x` at the end
    if phase.distill.weight and not phase.int8 and phase.backup_dir is None:
        # The teacher's predictions once, beside the targets, instead of in every step.
        packed = distill_lib.with_teacher_predictions(model, x, y, sample_weight, batch_size)
        if packed is not None:
            y, phase.distill.predictions_given = packed, True
    with phase:
        # The validation data go to `fit` too, for the logs (History,
        # TensorBoard).
        model.fit(
            **data.fit_inputs(x, y, sample_weight, batch_size, steps_per_epoch), epochs=epochs,
            validation_data=validation_data, validation_steps=validation_steps,
            callbacks=[phase, *(callbacks or ())], verbose=verbose,
        )
    return phase.result


def _phase_arguments(sparsity, tolerance, kwargs: dict) -> dict:
    """`ShrinkPhase`'s arguments from `shrink()`'s: the policy's settings
    build the policy, `weights` the granularity."""
    phase = {name: kwargs[name] for name in _PHASE_ARGS - {"weights"} if name in kwargs}
    if "weights" in kwargs:
        phase["granularity"] = granularity_lib.get(phase.get("granularity", "weight"), kwargs["weights"])
    settings = {name: kwargs[name] for name in _POLICY_ARGS if name in kwargs}
    tolerance_settings = {name: kwargs[name] for name in _TOLERANCE_ARGS if name in kwargs}
    sparsity_settings = {name: kwargs[name] for name in _SPARSITY_ARGS if name in kwargs}
    if "policy" in phase:
        given = sorted({*settings, *tolerance_settings, *sparsity_settings})
        if given or sparsity is not None or tolerance is not None:
            raise ValueError(
                f"Give the policy's settings to the policy itself, not next to `policy=`. Received: "
                f"{given + [n for n, v in (('sparsity', sparsity), ('tolerance', tolerance)) if v is not None]}")
        return phase
    if sparsity is not None:
        if tolerance is not None:
            raise ValueError(
                "Give one of `sparsity` (a target) and `tolerance` (an accuracy limit), not both. "
                f"Received: sparsity={sparsity!r}, tolerance={tolerance!r}")
        if tolerance_settings:
            raise ValueError(
                f"{sorted(tolerance_settings)} configure the tolerance mode; the sparsity mode "
                f"(sparsity={sparsity!r}) cuts to its target regardless.")
        phase["policy"] = SparsityTarget(sparsity, **sparsity_settings, **settings)
        return phase
    if sparsity_settings:
        raise ValueError(f"{sorted(sparsity_settings)} configure the sparsity mode: give `sparsity=` too.")
    phase["policy"] = ToleranceClimb(0.01 if tolerance is None else tolerance, monitor=phase.pop("monitor", None),
                                     **tolerance_settings, **settings)
    return phase
