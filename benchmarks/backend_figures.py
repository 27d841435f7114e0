"""The same small training under each configuration: penalty value and a
weight checksum, next to the single-device float32 TensorFlow run.

Each configuration runs in its own process (the backend and the device setup
are fixed at import). The model: 16-32-4 MLP, L1 on the hidden kernel with a
PolynomialDecay strength driven by RegularizationScheduler (per epoch, which
every backend supports), ElasticNet on the output kernel, SGD, 4 epochs on
fixed synthetic data, from the same NumPy initial weights.

Usage (JAX/PyTorch need `pip install -e '.[backends]'`):

    python benchmarks/backend_figures.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CONFIGS = {
    "tensorflow float32": {"KERAS_BACKEND": "tensorflow"},
    "tensorflow XLA": {"KERAS_BACKEND": "tensorflow", "RK_JIT": "1"},
    "tensorflow mixed_float16": {"KERAS_BACKEND": "tensorflow", "RK_POLICY": "mixed_float16"},
    "tensorflow mixed_bfloat16": {"KERAS_BACKEND": "tensorflow", "RK_POLICY": "mixed_bfloat16"},
    "tensorflow MirroredStrategy x2": {"KERAS_BACKEND": "tensorflow", "RK_MIRRORED": "1"},
    "jax": {"KERAS_BACKEND": "jax"},
    "torch": {"KERAS_BACKEND": "torch"},
}

WORKER = r"""
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
if os.environ.get("RK_MIRRORED"):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import keras_regkit as rk
if os.environ.get("RK_POLICY"):
    keras.mixed_precision.set_global_policy(os.environ["RK_POLICY"])
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 16)).astype("float32")
y = rng.normal(size=(256, 4)).astype("float32")

def build():
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="hidden",
            kernel_regularizer=rk.regularizers.L1(
                keras.optimizers.schedules.PolynomialDecay(0.0, 3, 1e-3))),
        keras.layers.Dense(4, name="out", dtype="float32",
            kernel_regularizer=rk.regularizers.ElasticNet(1e-4, 1e-4)),
    ])
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=bool(os.environ.get("RK_JIT")))
    # Start from the same NumPy weights: each backend's seeded initializers
    # draw different numbers.
    start = np.random.default_rng(1)
    model.set_weights([start.normal(scale=0.3, size=w.shape).astype("float32") for w in model.get_weights()])
    return model

if os.environ.get("RK_MIRRORED"):
    import tensorflow as tf
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = build()
else:
    model = build()
history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0,
                    callbacks=[rk.callbacks.RegularizationScheduler(update_freq="epoch")])
penalty = float(sum(float(keras.ops.convert_to_numpy(l)) for l in model.losses))
weights = model.get_weights()
print(json.dumps({"penalty": penalty,
                  "checksum": float(sum(np.abs(w.astype("float64")).sum() for w in weights)),
                  "loss": float(history.history["loss"][-1]),
                  "flat": np.concatenate([w.ravel() for w in weights]).astype("float64").tolist()}))
"""


def run(name, env, python):
    full_env = {**os.environ, **env}
    done = subprocess.run([python, "-c", WORKER], env=full_env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    import numpy as np

    python = os.environ.get("RK_BACKENDS_PYTHON", sys.executable)
    results = {name: run(name, env, python) for name, env in CONFIGS.items()}
    reference = results["tensorflow float32"]
    print(f"{'configuration':<32} {'penalty':>12} {'checksum':>12} {'final loss':>11} {'max |dw| vs TF f32':>19}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<32} error: {r['error']}")
            continue
        diff = float(np.max(np.abs(np.array(r["flat"]) - np.array(reference["flat"]))))
        print(f"{name:<32} {r['penalty']:>12.6g} {r['checksum']:>12.6f} {r['loss']:>11.6f} {diff:>19.2e}")


if __name__ == "__main__":
    main()
