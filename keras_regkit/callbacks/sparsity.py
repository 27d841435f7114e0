"""`SparsityMonitor`: per-layer sparsity and norms into `logs`."""

from __future__ import annotations

import os
import warnings
from typing import Sequence, Union

import keras
from keras import ops

from keras_regkit import _validate
from keras_regkit import stats as stats_lib
from keras_regkit import weights as weights_lib
from keras_regkit.pruning import granularity as granularity_lib


@keras.saving.register_keras_serializable(package="keras_regkit")
class SparsityMonitor(keras.callbacks.Callback):
    """Reports the sparsity and norms of the model's weights during `fit`.

    At each update it adds to `logs` (so History, CSVLogger, TensorBoard and
    the progress bar show them), for the whole model and for each weight:

    - `sparsity`, `sparsity/<layer path>`: fraction of exact zeros;
    - `near_zero`, `near_zero/<layer path>`: fraction with `|w| <= threshold`
      (absolute by default; `relative=True` makes it `threshold * rms(w)` of
      each weight, so layers of different scales compare fairly);
    - `l1_norm`, `l2_norm` and their per-layer keys;
    - `nonfinite`, `nonfinite/<layer path>`: count of NaN/inf entries;
    - with `pattern="2:4"` (any `"N:M"`), `pattern_ok`: the fraction of
      kernels that have at most N non-zeros in every group of M inputs
      (1.0: all of them; NaN when no watched weight is a kernel with an
      input axis).

    Kernels go by their layer path (`encoder/dense`), other weights by
    `path/kind` (`encoder/dense/bias`). Where the weights live on an
    accelerator the statistics are computed there, with one small host
    transfer per update; where they live in host memory (CPU) NumPy reads
    them in place, faster than `get_weights()` and a NumPy scan.

    Args:
        weights: Weight kinds to watch: `"kernel"` (default, what penalties act
            on by default), a list of kinds, or `"all"`.
        threshold: Near-zero threshold, >= 0. Defaults to 1e-3.
        relative: Whether `threshold` is relative to each weight's RMS
            (True or False). Defaults to False.
        update_freq: `"epoch"` (default) or an int N: update every N batches
            (into the batch logs) as well as at each epoch end.
        per_layer: Whether to log the per-layer keys as well as the totals.
            Defaults to True.
        target_sparsity: If set (a float in [0, 1]), stop training once the
            model's fraction of exact zeros reaches it.
        verbose: 0 (default) silent; 1 prints a per-layer table at the end of
            every `print_every`-th epoch.
        print_every: Epoch interval for the verbose table. Defaults to 1.
        histogram_freq: If > 0, write weight-magnitude histograms to
            TensorBoard every that many epochs (the `tensorboard` package
            needed; under JAX and PyTorch each histogram copies its weight
            to the host, as Keras' own TensorBoard callback does).
        log_dir: Where to write histograms. Required with `histogram_freq`.
        pattern: Optional `"N:M"` (e.g. `"2:4"`) to check each kernel
            against (logged as `pattern_ok`).

    Raises:
        TypeError, ValueError: For a bad argument (named in the message):
            booleans must be True or False (not strings such as "no").
        ImportError: If `histogram_freq` is set and `tensorboard` is not
            installed.

    Warns:
        UserWarning: At the start of `fit`, if `print_every` (with
            `verbose=1`) or `histogram_freq` is beyond its last epoch, or an
            int `update_freq` beyond an epoch's batches, so nothing would be
            printed, written or updated per batch.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
    ...     callbacks=[rk.callbacks.SparsityMonitor(per_layer=False)])
    >>> sorted(history.history)
    ['l1_norm', 'l2_norm', 'loss', 'near_zero', 'nonfinite', 'sparsity']
    """

    def __init__(
        self,
        weights: Union[str, Sequence[str]] = "kernel",
        threshold: float = 1e-3,
        relative: bool = False,
        update_freq: Union[str, int] = "epoch",
        per_layer: bool = True,
        target_sparsity: float | None = None,
        verbose: int = 0,
        print_every: int = 1,
        histogram_freq: int = 0,
        log_dir: str | None = None,
        pattern: str | None = None,
    ):
        super().__init__()
        if update_freq != "epoch":
            try:
                _validate.integer("update_freq", update_freq, minimum=1)
            except TypeError:
                raise ValueError(
                    "Invalid value for argument `update_freq`: expected 'epoch' or "
                    f"an int >= 1 (batches). Received: update_freq={update_freq!r}"
                ) from None
        if target_sparsity is not None:
            _validate.real("target_sparsity", target_sparsity, minimum=0.0, maximum=1.0)
        _validate.real("threshold", threshold)
        _validate.boolean("relative", relative)
        _validate.boolean("per_layer", per_layer)
        _validate.integer("verbose", verbose)
        weights_lib.normalize_kinds(weights)
        _validate.integer("print_every", print_every, minimum=1)
        _validate.integer("histogram_freq", histogram_freq)
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(
                "Invalid value for argument `log_dir`: expected a directory path (str). "
                f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}"
            )
        if histogram_freq and not log_dir:
            raise ValueError(
                "Argument `log_dir` is required when `histogram_freq` > 0. "
                f"Received: histogram_freq={histogram_freq}, log_dir={log_dir!r}"
            )
        if histogram_freq:
            _require_tensorboard()
        # As a string ("2:4"), however given: it is logged and saved in the config.
        self.pattern = None if pattern is None else granularity_lib.pattern(pattern).name
        self.weights_spec = weights
        self.threshold = threshold
        self.relative = relative
        self.update_freq = update_freq
        self.per_layer = per_layer
        self.target_sparsity = target_sparsity
        self.verbose = verbose
        self.print_every = print_every
        self.histogram_freq = histogram_freq
        self.log_dir = log_dir
        self.last_stats: list[stats_lib.LayerStats] = []
        self._stats = None
        self._writer = None
        self._batches_at_update = 0

    def get_config(self) -> dict:
        return {
            "weights": self.weights_spec,
            "threshold": self.threshold,
            "relative": self.relative,
            "update_freq": self.update_freq,
            "per_layer": self.per_layer,
            "target_sparsity": self.target_sparsity,
            "verbose": self.verbose,
            "print_every": self.print_every,
            "histogram_freq": self.histogram_freq,
            "log_dir": self.log_dir,
            "pattern": self.pattern,
        }

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, _validate.init_arguments(cls))
        return cls(**config)

    def on_train_begin(self, logs=None):
        # Built here, not in __init__: the callback may be created before the
        # model, and the weights to watch are fixed for the whole fit.
        self._stats = stats_lib.WeightStats(
            self.model, self.weights_spec, self.threshold, self.relative, self.pattern
        )
        self._warn_of_intervals_past_the_end()

    def _warn_of_intervals_past_the_end(self) -> None:
        """An interval longer than the fit (or than an epoch, for batch
        updates) would do nothing, silently: say so at the start."""
        params = self.params or {}
        per_batch = self.update_freq if self.update_freq != "epoch" else 0
        intervals = [
            ("print_every", self.print_every, self.verbose, "epochs", params.get("epochs"), "prints no table"),
            ("histogram_freq", self.histogram_freq, self.histogram_freq, "epochs", params.get("epochs"),
             "writes no histogram"),
            ("update_freq", per_batch, per_batch, "batches per epoch", params.get("steps"),
             "makes no batch update (only those at each epoch's end)"),
        ]
        for name, every, active, unit, count, outcome in intervals:
            if active and count is not None and every > count:
                warnings.warn(
                    f"SparsityMonitor({name}={every}) {outcome} in this fit: it runs {count} {unit}. "
                    f"Pass {name} <= {count}.",
                    stacklevel=3,
                )

    def on_epoch_begin(self, epoch, logs=None):
        self._batches_at_update = 0

    def on_train_batch_end(self, batch, logs=None):
        # Counted, not `batch % N`: with steps_per_execution > 1 Keras reports
        # only every k-th batch index.
        if self.update_freq != "epoch" and batch + 1 - self._batches_at_update >= self.update_freq:
            self._batches_at_update = batch + 1
            self._update({} if logs is None else logs)

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        self._update(logs)
        if self.verbose and (epoch + 1) % self.print_every == 0:
            report = stats_lib.SparsityReport.from_layers(self.last_stats, self.threshold, self.relative, self.pattern)
            print(f"\nEpoch {epoch + 1}: weight sparsity\n{report}")
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            self._write_histograms(epoch)

    def _update(self, logs):
        # `self.model` first: mid-epoch under JAX it puts the latest weights
        # back into the variables (the trainer holds them elsewhere).
        model = self.model
        self.last_stats = self._stats.compute()
        rows = [("", stats_lib.total(self.last_stats))]
        if self.per_layer:
            rows += [(f"/{s.name}", s) for s in self.last_stats]
        if self.target_sparsity is not None and rows[0][1].sparsity >= self.target_sparsity:
            if self.verbose and not model.stop_training:
                print(
                    f"\nsparsity {rows[0][1].sparsity:.4f} reached "
                    f"target_sparsity={self.target_sparsity}; stopping training."
                )
            model.stop_training = True
        for suffix, s in rows:
            logs[f"sparsity{suffix}"] = s.sparsity
            logs[f"near_zero{suffix}"] = s.near_zero_fraction
            logs[f"l1_norm{suffix}"] = s.l1
            logs[f"l2_norm{suffix}"] = s.l2
            logs[f"nonfinite{suffix}"] = s.nonfinite
        if self.pattern is not None:
            applicable = [s.pattern_ok for s in self.last_stats if s.pattern_ok is not None]
            logs["pattern_ok"] = sum(applicable) / len(applicable) if applicable else float("nan")

    def _write_histograms(self, epoch):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        tensorflow = keras.backend.backend() == "tensorflow"
        with self._writer.as_default():
            for ref in self._stats.refs:
                magnitude = ops.absolute(ops.cast(ref.variable.value, "float32"))
                tf.summary.histogram(
                    f"weight_magnitude/{ref.name}",
                    # TensorFlow takes its own tensor as it is; other
                    # backends' tensors go through NumPy.
                    magnitude if tensorflow else ops.convert_to_numpy(magnitude),
                    step=epoch,
                )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _require_tensorboard():
    try:
        import tensorboard  # noqa: F401  (only to check it is there)
    except ImportError:
        raise ImportError(
            "SparsityMonitor(histogram_freq=...) needs the `tensorboard` package: "
            "pip install 'keras_regkit[tensorboard]'"
        ) from None
