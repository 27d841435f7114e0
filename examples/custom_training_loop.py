"""A scheduled penalty in a custom training loop (no `model.fit`).

Without `fit` there is no `RegularizationScheduler`; instead each scheduled
regularizer is bound to the optimizer's step counter with
`reg.bind_step(optimizer.iterations)`, once, before the train step is traced.
The penalty then follows the optimizer inside the compiled step, with no
host work per step. The loss adds `sum(model.losses)`, the weight penalties.

The same loop runs twice from the same initial weights: with an L1 strength
ramping up (`DelayedRamp`), and with strength 0. The penalised run ends with
a much smaller kernel L1 norm and more near-zero weights.

Run:
    python examples/custom_training_loop.py
    python examples/custom_training_loop.py --quick
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_regkit as rk  # noqa: E402


def train(x, y, strength, epochs, steps_per_epoch, batch_size=32, seed=0):
    keras.utils.set_random_seed(seed)  # same initial weights and batches for every strength
    ramp = rk.schedules.DelayedRamp(strength, delay_steps=steps_per_epoch, ramp_steps=steps_per_epoch * 2)
    reg = rk.regularizers.L1(ramp)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", kernel_regularizer=reg),
        keras.layers.Dense(10, kernel_regularizer=reg),
    ])
    optimizer = keras.optimizers.Adam(3e-3)
    reg.bind_step(optimizer.iterations)  # before tracing, so the step is read live
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            data_loss = loss_fn(yb, model(xb, training=True))
            penalty = tf.add_n(model.losses)
            loss = data_loss + penalty
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return data_loss, penalty

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(batch_size)
    log = []
    for epoch in range(epochs):
        losses = np.array([[float(v) for v in train_step(xb, yb)] for xb, yb in dataset])
        log.append({"epoch": epoch + 1, "step": reg.step, "strength": reg.current_strengths()["alpha"],
                    "data_loss": losses[:, 0].mean(), "penalty": losses[:, 1].mean()})
    return model, log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--strength", type=float, default=1e-3, help="L1 strength after the ramp")
    args = parser.parse_args(argv)
    epochs, limit = (4, 400) if args.quick else (args.epochs, None)

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:limit]
    x, y = (digits.data[order] / 16.0).astype("float32"), digits.target[order].astype("int32")
    steps = int(np.ceil(len(x) / 32))

    results = {}
    for strength in (args.strength, 0.0):
        model, log = train(x, y, strength, epochs, steps)
        print(f"\nL1 strength ramping to {strength:g}:")
        for row in log:
            print("  epoch {epoch:2d}  step {step:4d}  strength {strength:.2e}  "
                  "data loss {data_loss:.4f}  penalty {penalty:.4f}".format(**row))
        report = rk.sparsity_report(model, threshold=1e-3)
        accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
        print(f"  kernel L1 norm {report.total.l1:.1f}, |w|<=1e-3: {report.total.near_zero_fraction:.1%}, "
              f"train accuracy {accuracy:.3f}")
        results["penalised" if strength else "unpenalised"] = {
            "log": log, "l1": report.total.l1, "near_zero": report.total.near_zero_fraction,
            "accuracy": accuracy}
    return results


if __name__ == "__main__":
    main()
