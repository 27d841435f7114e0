"""Distillation from the starting model during the shrink.

With `distill=`, every training step of the shrink adds to the model's own
loss a teacher term: how far the shrinking model's predictions are from
the starting model's on the same batch, times a weight. The cuts take away
what the model knew; the term pulls it back towards its own starting
predictions, which carry more than the labels (how sure it was, and of
what instead) and hold on every training input (Hinton et al.,
"Distilling the Knowledge in a Neural Network", 2015).

The term per output follows the loss the model was compiled with:

- categorical or sparse categorical cross-entropy (focal ones too): the
  KL divergence from the teacher's class distribution to the model's, on
  logits or probabilities as the loss's `from_logits` says;
- binary cross-entropy: the same for each unit's two classes;
- any other loss (regression, a loss of your own): the mean squared
  difference of the outputs (for logits, logit matching).

The teacher is the model itself at its starting weights, called in
inference mode with those weights (`stateless_call`) inside the train step:
no copy of the model is built, so Sequential, functional and subclassed
models all work, and the starting predictions follow the batch as `fit`
shuffles or augments it. Where `shrink()` is given the training data as
arrays, it computes the starting predictions once instead (one pass of
`predict`, against one forward pass more in every step) and hands them to
the step beside the targets (`with_teacher_predictions`): they are the
same, since the teacher runs in inference mode on the batch's own inputs.
The term is added by wrapping the model's `compute_loss` (and, to read
the targets alone, `compute_metrics`) on the instance for the shrink (the
train step of `fit` calls it under all three backends; a `train_step` of
your own that does not call `compute_loss` gets no term), and the wrappers
are removed when the shrink ends, however it ends. Validation losses
(`val_loss`) stay the model's own.
"""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np

from keras_regkit import _validate
from keras_regkit._keras import backend as fence
from keras_regkit._step_functions import rebuild_step_functions
from keras_regkit.shrinking import evaluation
from keras_regkit.shrinking.evaluation import per_output

# The teacher term's weight for `distill=True`, next to a loss of weight 1.
DEFAULT_WEIGHT = 1.0
# `distill="auto"` distills a sparsity-mode shrink to at least this target:
# on the shrink quality benchmark (digits and MNIST-1D, 5 seeds) the term
# helped every row at 97, 98 and 99 % (paired mean +0.2 to +0.9 points,
# 20 seeds of 30 better, 9 worse) and was a coin toss at 90 and 95 %.
AUTO_FROM = 0.97
# Probabilities are clipped to this before their log.
_EPSILON = 1e-7


def validated(distill, policy=None, int8: bool = False) -> float:
    """`distill` as the shrink takes it: `"auto"` (the weight
    `DEFAULT_WEIGHT` for a sparsity-mode `policy` aiming at `AUTO_FROM` or
    more, without `int8`; else off), False or None (off), True (the weight
    `DEFAULT_WEIGHT`) or the teacher term's weight, a float > 0. Returns
    the weight (0.0: off)."""
    if isinstance(distill, str) and distill == "auto":
        aims_high = getattr(policy, "name", None) == "sparsity" and (getattr(policy, "target", None) or 0) >= AUTO_FROM
        return DEFAULT_WEIGHT if aims_high and not int8 else 0.0  # see AUTO_FROM
    if distill is None or distill is False:
        return 0.0
    if distill is True:
        return DEFAULT_WEIGHT
    if isinstance(distill, (bool, np.bool_)) or not isinstance(distill, (int, float, np.floating, np.integer)):
        raise TypeError(
            "Invalid value for argument `distill`: expected \"auto\", True, False or the teacher term's weight "
            f"(a float > 0). Received: distill={distill!r} of type {type(distill).__name__}")
    weight = _validate.real("distill", distill)
    if weight == 0:
        raise ValueError("Invalid value for argument `distill`: a weight must be > 0 (give False to "
                         "distill nothing). Received: distill=0")
    return weight


def output_kind(loss) -> str:
    """What the teacher term compares for an output trained with `loss`:
    `"logits"` / `"probabilities"` (a class axis), `"binary_logits"` /
    `"binary_probabilities"` (independent units) or `"values"`."""
    if isinstance(loss, str):
        name, from_logits = loss, False
    else:
        config = loss.get_config() if isinstance(loss, keras.losses.Loss) else {}
        name = config.get("name") or getattr(loss, "__name__", "")
        from_logits = bool(config.get("from_logits", False))
    name = name.lower()
    if "categorical" in name and ("crossentropy" in name or "focal" in name):
        return "logits" if from_logits else "probabilities"
    if "binary" in name and ("crossentropy" in name or "focal" in name):
        return "binary_logits" if from_logits else "binary_probabilities"
    return "values"


def divergence(kind: str, student, teacher):
    """The teacher term of one output, averaged over its samples (and
    positions, and binary units)."""
    if kind == "logits":
        teacher_log = keras.ops.log_softmax(teacher, axis=-1)
        gap = keras.ops.exp(teacher_log) * (teacher_log - keras.ops.log_softmax(student, axis=-1))
        return keras.ops.mean(keras.ops.sum(gap, axis=-1))
    if kind == "probabilities":
        teacher = keras.ops.clip(teacher, _EPSILON, 1.0)
        gap = teacher * (keras.ops.log(teacher) - keras.ops.log(keras.ops.clip(student, _EPSILON, 1.0)))
        return keras.ops.mean(keras.ops.sum(gap, axis=-1))
    if kind in ("binary_logits", "binary_probabilities"):
        if kind == "binary_logits":
            teacher, student = keras.ops.sigmoid(teacher), keras.ops.sigmoid(student)
        teacher = keras.ops.clip(teacher, _EPSILON, 1.0 - _EPSILON)
        student = keras.ops.clip(student, _EPSILON, 1.0 - _EPSILON)
        gap = (teacher * (keras.ops.log(teacher) - keras.ops.log(student))
               + (1.0 - teacher) * (keras.ops.log(1.0 - teacher) - keras.ops.log(1.0 - student)))
        return keras.ops.mean(gap)
    return keras.ops.mean(keras.ops.square(student - teacher))


# The targets `fit` sees when the starting predictions ride beside them.
LABELS_KEY, TEACHER_KEY = "keras_regkit_labels", "keras_regkit_teacher_predictions"


def unpacked(y, sample_weight=None):
    """`(targets, teacher predictions, sample weights)` from what a step was
    given: the predictions are None where they do not ride in `y`. Keras
    gives a single `sample_weight` array the structure of `y` (one per
    output): the targets' part is theirs."""
    if isinstance(y, dict) and TEACHER_KEY in y:
        if isinstance(sample_weight, dict) and LABELS_KEY in sample_weight:
            sample_weight = sample_weight[LABELS_KEY]
        return y[LABELS_KEY], y[TEACHER_KEY], sample_weight
    return y, None, sample_weight


def with_teacher_predictions(model: keras.Model, x, y, sample_weight=None, batch_size=None):
    """`y` with the model's predictions on `x` beside it, for `fit` with a
    `Distillation` attached, or None where they cannot ride there (the
    teacher then runs in each step): they do where `x` and `y` are arrays
    (or lists or dicts of them), `sample_weight` is None or one weight per
    sample (Keras spreads it over the packed targets; one per output or per
    time step would not fit them), the train and predict steps are Keras'
    own (one of yours may read the targets, or predict something else), no
    Keras distribution is set, Keras' `fit` will not build the compiled
    loss from the targets' shape, and the predictions (as float32, as `fit`
    holds them) take no more memory than `x`."""
    arrays = keras.tree.flatten((x, y))
    if y is None or not arrays or not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    if sample_weight is not None and not (isinstance(sample_weight, np.ndarray) and (
            sample_weight.ndim == 1 or sample_weight.shape[1:] == (1,))):
        return None
    if type(model).train_step is not keras.Model.train_step or type(model).predict_step is not keras.Model.predict_step:
        return None
    if keras.distribution.distribution() is not None:
        return None  # across processes, `predict` gives arrays no one process holds
    if not fence.compiled_loss_and_metrics_built(model):
        return None  # JAX's fit would build the loss from the packed targets
    outputs = _output_spec(model, x)
    if outputs is None:
        return None
    per_sample = sum(math.prod(o.shape) * max(np.dtype(o.dtype).itemsize, 4) for o in keras.tree.flatten(outputs))
    samples = len(keras.tree.flatten(x)[0])
    if per_sample * samples > sum(a.nbytes for a in keras.tree.flatten(x)):
        return None  # e.g. a language model's logits at every position
    # The checks' compiled predict step, batch by batch (`model.predict`
    # would build a dataset and its iterator first: 80-115 ms against 5-9 ms
    # on the quality benchmark's MLPs). Under a TensorFlow strategy of
    # several replicas that is a direct call per batch, as for the checks.
    teacher = evaluation.predict(model, x, batch_size=batch_size or _KERAS_PREDICT_BATCH)
    return {LABELS_KEY: y, TEACHER_KEY: keras.tree.pack_sequence_as(outputs, teacher)}


_KERAS_PREDICT_BATCH = 32  # `model.predict`'s default batch size


def _output_spec(model, x):
    """The model's outputs for one sample of `x`, from a symbolic call (a
    `predict` of one sample would trace the predict step for that shape);
    None where the model cannot be called symbolically on such inputs
    (strings, a subclassed `call` that needs values)."""
    try:
        return model.compute_output_spec(
            keras.tree.map_structure(lambda a: keras.KerasTensor(a[:1].shape, a.dtype), x))
    except Exception:  # noqa: BLE001 - any failure only means: the teacher runs in the step
        return None


class Distillation:
    """The teacher term of a shrink: attached to the model when the shrink
    starts, detached when it ends.

    Args:
        distill: As `validated` takes it.
        policy: The shrink's policy, which `"auto"` reads.
        int8: Whether the shrink trains through simulated int8 (`"auto"`
            leaves the term off there).
    """

    def __init__(self, distill=False, policy=None, int8: bool = False):
        self.weight = validated(distill, policy, int8)
        # Set by `shrink()` when every training batch brings the teacher's
        # predictions (`with_teacher_predictions`): no copy of the weights.
        self.predictions_given = False
        self._model = None

    @property
    def attached(self) -> bool:
        """Whether the term is in a model's loss now."""
        return self._model is not None

    def attach(self, model: keras.Model) -> None:
        """Adds the teacher term, with the model's current weights as the
        teacher, to every training step's loss from now on. Does nothing
        when off."""
        if not self.weight or self._model is not None:
            return
        own_loss = model.compute_loss  # the model's own, bound (a subclass's override included)
        takes_training = "training" in inspect.signature(own_loss).parameters
        # `stateless_call` hands its keywords to `call` as they are: `training`
        # only to a `call` that takes it (its layers infer otherwise).
        call_parameters = inspect.signature(model.call).parameters
        inference = {"training": False} if "training" in call_parameters or any(
            p.kind == p.VAR_KEYWORD for p in call_parameters.values()) else {}
        kinds = None
        predictions_given, weight = self.predictions_given, self.weight
        if not predictions_given:  # the teacher runs in the step, at these weights
            teacher_trainable = [keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(v))
                                 for v in model.trainable_variables]
            teacher_frozen = [keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(v))
                              for v in model.non_trainable_variables]

        def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
            nonlocal kinds
            y, teacher, sample_weight = unpacked(y, sample_weight)
            if takes_training:
                loss = own_loss(x, y, y_pred, sample_weight, training=training)
            else:
                loss = own_loss(x, y, y_pred, sample_weight)
            if not training or y_pred is None:
                return loss  # evaluation: the model's own loss only
            if teacher is None:  # not computed once beside the targets: the teacher runs now
                if predictions_given:
                    # Every training batch brings them: this is an evaluation, through a `compute_loss`
                    # of the user's that takes no `training` (Keras then passes none).
                    return loss
                teacher, _ = model.stateless_call(teacher_trainable, teacher_frozen, x, **inference)
            students, teachers = keras.tree.flatten(y_pred), keras.tree.flatten(teacher)
            if kinds is None:
                losses = per_output(model, students, getattr(model, "loss", None))
                kinds = [output_kind(loss) if loss is not None else "values" for loss in losses]
            term = sum(divergence(kind, student, keras.ops.stop_gradient(keras.ops.convert_to_tensor(teach)))
                       for kind, student, teach in zip(kinds, students, teachers))
            return loss + keras.ops.cast(weight * term, loss.dtype)

        own_metrics = model.compute_metrics

        def compute_metrics(x, y, y_pred, sample_weight=None):
            y, _, sample_weight = unpacked(y, sample_weight)
            return own_metrics(x, y, y_pred, sample_weight)

        # Instance attributes of the user's own, if any, to put back.
        self._own = {name: model.__dict__.get(name) for name in _WRAPPED}
        model.compute_loss, model.compute_metrics = compute_loss, compute_metrics
        self._model = model
        # The train step only: the test step's loss and metrics are the model's own either way.
        rebuild_step_functions(model, losses_changed=False)

    def detach(self) -> None:
        """Puts the model's own `compute_loss` and `compute_metrics` back (once)."""
        model, self._model = self._model, None
        self.predictions_given = False  # for the next `fit` to say again
        if model is None:
            return
        for name, own in self._own.items():
            if own is not None:
                setattr(model, name, own)
            else:
                delattr(model, name)
        rebuild_step_functions(model)


_WRAPPED = ("compute_loss", "compute_metrics")
