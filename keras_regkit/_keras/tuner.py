"""Private reads of KerasTuner: the parse of an objective."""

from __future__ import annotations

from keras_regkit._keras import moved


def create_objective(objective):
    """KerasTuner's own parse of an objective: a metric's name (its
    direction inferred as the tuners infer it, e.g. `"val_loss"` -> min,
    `"val_accuracy"` -> max), a `keras_tuner.Objective` (returned as is) or
    a list of them. KerasTuner exports no public function for it
    (`keras_tuner.src.engine.objective.create_objective`).

    Raises:
        TypeError, ValueError: KerasTuner's own, for an objective it cannot
            parse (e.g. a name whose direction it cannot infer).
    """
    try:
        from keras_tuner.src.engine.objective import create_objective as parse
    except ImportError as error:
        raise moved("keras_tuner", "keras_tuner.src.engine.objective.create_objective", error) from None
    return parse(objective)
