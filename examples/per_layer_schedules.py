"""Different scheduled penalties per layer on a saved-and-reloaded model.

Trains a small functional model on digits with no penalty and saves it. Then
loads it back with `keras.saving.load_model` (as you would a checkpoint from
elsewhere), attaches a different scheduled penalty to each group of layers
with `apply_regularizers` (a name glob, a layer class), and goes on training
with `RegularizationScheduler`, which logs each strength as
`strength/<weight path>`. A second save/reload shows that the penalties, their
schedules and their positions travel with the file.

Run:
    python examples/per_layer_schedules.py [--workdir DIR]
    python examples/per_layer_schedules.py --quick
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def build_model():
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(128, activation="relu", name="encoder_1")(inputs)
    h = keras.layers.Dense(64, activation="relu", name="encoder_2")(h)
    h = keras.layers.Dropout(0.1)(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    return keras.Model(inputs, outputs, name="digits_mlp")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=10, help="epochs before and after reloading")
    parser.add_argument("--workdir", help="where to save the .keras files (default: a temp dir)")
    args = parser.parse_args(argv)
    epochs, limit = (3, 500) if args.quick else (args.epochs, None)
    workdir = args.workdir or tempfile.mkdtemp(prefix="regkit_")
    os.makedirs(workdir, exist_ok=True)

    keras.utils.set_random_seed(0)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:limit]
    x, y = (digits.data[order] / 16.0).astype("float32"), digits.target[order].astype("int32")
    steps = int(np.ceil(len(x) / 32))  # batches per epoch

    model = build_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    plain_path = os.path.join(workdir, "plain.keras")
    model.save(plain_path)

    model = keras.saving.load_model(plain_path)  # compiled, optimizer state included
    schedules = keras.optimizers.schedules
    attached = rk.apply_regularizers(model, {  # later entries win where selectors overlap
        # every Dense: an L2 that starts strong and halves every epoch...
        keras.layers.Dense: rk.regularizers.L2(schedules.ExponentialDecay(1e-3, steps, 0.5)),
        # ...but the first layer: an L1 ramping linearly from 0 to 1e-4
        "encoder_1": rk.regularizers.L1(schedules.PolynomialDecay(0.0, steps * epochs, 1e-4)),
        # ...and the head: no L1 for one epoch, then a ramp, plus a fixed L2
        "head": rk.regularizers.ElasticNet(
            l1=rk.schedules.DelayedRamp(1e-4, delay_steps=steps, ramp_steps=steps), l2=1e-4),
    })
    print("attached:", {ref.path: type(ref.regularizer).__name__ for ref in attached.refs})
    history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
                        callbacks=[rk.callbacks.RegularizationScheduler()])
    strengths = {k: v for k, v in history.history.items() if k.startswith("strength/")}
    print("\nstrength per epoch after reloading:")
    for key, values in strengths.items():
        print(f"  {key:<26}", " ".join(f"{v:.1e}" for v in values))
    print(f"  {'reg_loss':<26}", " ".join(f"{v:.3f}" for v in history.history["reg_loss"]))

    final_path = os.path.join(workdir, "penalised.keras")
    model.save(final_path)
    reloaded = keras.saving.load_model(final_path)
    penalty = [float(keras.ops.convert_to_numpy(sum(m.losses))) for m in (model, reloaded)]
    regularizers = {ref.path: ref.regularizer for ref in rk.iter_weights(reloaded)}
    print(f"\nafter saving to {final_path} and reloading:")
    for path, regularizer in regularizers.items():
        print(f"  {path:<10} step={regularizer.step:<4} {regularizer}")
    print(f"  total penalty before/after: {penalty[0]:.5f} / {penalty[1]:.5f}")
    return {"strengths": strengths, "reg_loss": history.history["reg_loss"],
            "regularizers": regularizers, "penalty": penalty, "steps_per_epoch": steps,
            "epochs": epochs, "accuracy": history.history["accuracy"][-1]}


if __name__ == "__main__":
    main()
