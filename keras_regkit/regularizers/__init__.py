"""Weight penalties whose strengths are floats or schedules.

Every class here is a `keras.regularizers.Regularizer`: pass it to a layer's
`kernel_regularizer=` (or attach it later with `keras_regkit.apply_regularizers`)
and it is saved and reloaded with the model.

A strength may be a schedule (any serializable
`keras.optimizers.schedules.LearningRateSchedule`). The schedule is evaluated
inside the train step at the regularizer's step, so moving the step never
retraces the train function under TensorFlow and PyTorch (under JAX the
compiled step holds it as a constant and is rebuilt when it moves);
`keras_regkit.callbacks.RegularizationScheduler` moves it during `fit`.
A schedule's value is clipped at 0: where it goes negative (e.g.
`PolynomialDecay(0.1, 100, -0.1)` past step 50) the penalty is off, never a
reward for large weights, just as a negative float strength is refused.

The classes live in `elementwise` (`L1`, `L2`, `ElasticNet`, `ExpAbs`),
`group_lasso` (`GroupLasso`) and `combined` (`Combined`), on the base in
`base` (`Penalty`: strengths, schedules, configs); what they compute is
`keras_regkit._penalty_math`'s.
"""

from keras_regkit.regularizers.combined import Combined
from keras_regkit.regularizers.elementwise import L1, L2, ElasticNet, ExpAbs
from keras_regkit.regularizers.group_lasso import GroupLasso

__all__ = ["Combined", "ElasticNet", "ExpAbs", "GroupLasso", "L1", "L2"]
