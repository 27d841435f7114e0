"""`ProximalUpdate`: proximal penalties act during `fit`."""

from __future__ import annotations

import warnings

import keras

from keras_regkit import _validate, proximal


@keras.saving.register_keras_serializable(package="keras_regkit")
class ProximalUpdate(keras.callbacks.Callback):
    """Applies the model's proximal penalties after every optimizer step of
    `fit`.

    A penalty made with `proximal=True` (`L1`, `ElasticNet`'s L1 part,
    `GroupLasso`) adds nothing to the loss; instead each step ends by
    soft-thresholding the weight with the strength and the step size of
    that step, which leaves exact zeros during training. This callback
    binds those penalties to the model's optimizer
    (`keras_regkit.bind_proximal`) when training begins, and again at each
    epoch (a penalty attached or removed mid-fit). Once bound, each step
    follows the optimizer the model is compiled with, also after `compile`
    is called again without this callback. The work
    itself runs inside the compiled train step, as a Keras constraint: no
    per-batch host work.

    Scheduled strengths move as for any penalty: add
    `RegularizationScheduler` too.

    Raises:
        ValueError: At the start of `fit`, if the model is not built (under
            TensorFlow a model without an `Input` is built inside the first
            step, too late to bind), or if the optimizer is not SGD,
            Adam, AdamW, RMSprop or Adagrad (the step sizes known here),
            accumulates gradients or keeps a moving average of the weights
            (`use_ema=True`).

    Warns:
        UserWarning: At the start of `fit`, if the model has no proximal
            penalty.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, kernel_regularizer=rk.regularizers.L1(0.5, proximal=True))])
    >>> model.compile(keras.optimizers.SGD(0.1), "mse")
    >>> _ = model.fit(np.ones((8, 4)), np.ones((8, 8)), epochs=2, verbose=0,
    ...               callbacks=[rk.callbacks.ProximalUpdate()])
    >>> bool((keras.ops.convert_to_numpy(model.layers[0].kernel) == 0).any())
    True
    """

    def on_train_begin(self, logs=None):
        if not proximal.bind_proximal(self.model):
            warnings.warn(
                f"ProximalUpdate has nothing to do in model '{self.model.name}': no trainable weight "
                "has a penalty made with proximal=True (rk.regularizers.L1, ElasticNet or "
                "GroupLasso). One attached later is picked up at the next epoch.",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch, logs=None):
        proximal.bind_proximal(self.model)

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        _validate.config_keys(cls, config, [])
        return cls()
