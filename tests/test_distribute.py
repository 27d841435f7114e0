"""MirroredStrategy on two logical CPU devices gives single-device results.

Logical devices must be configured before TensorFlow starts, so the check
runs in a fresh process.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, os
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, keras_regkit as rk

    def run(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                      keras.layers.Dense(4, name="out")])
            rk.apply_regularizers(model, {"*": rk.regularizers.ExpAbs(
                keras.optimizers.schedules.PolynomialDecay(0.0, 8, 0.01))})
            rk.apply_regularizers(model, {"out": rk.regularizers.ElasticNet(1e-3, 1e-3)}, weights="bias")
            model.compile(keras.optimizers.SGD(0.05), "mse")
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 4)).astype("float32")
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[
            rk.callbacks.RegularizationScheduler(), rk.callbacks.SparsityMonitor(per_layer=False)])
        h = history.history
        return {"loss": h["loss"], "reg_loss": h["reg_loss"], "l1_norm": h["l1_norm"],
                "weights": [w.tolist() for w in model.get_weights()]}

    one = run(tf.distribute.get_strategy())
    two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"one": one, "two": two}))
    """
)


def test_mirrored_strategy_matches_single_device():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    one, two = runs["one"], runs["two"]
    assert one["reg_loss"][0] > 0
    for key in ("loss", "reg_loss", "l1_norm"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5)
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
