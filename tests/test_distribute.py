"""Distributed training gives single-device results: MirroredStrategy on two
logical CPU devices, MultiWorkerMirroredStrategy with two worker processes.

Logical devices and the multi-worker cluster must be set up before
TensorFlow starts, so those runs happen in fresh processes.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_regkit as rk

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute strategies run under the TensorFlow backend only"
)]

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


# -- MultiWorkerMirroredStrategy: two worker processes on loopback ----------

def train_for_comparison(strategy):
    """A tiny fit with a scheduled penalty, RegularizationScheduler,
    SparsityMonitor, held zeros and ShrinkPhase; returns what it logged and
    the final weights."""

    class PruneOnce(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                rk.prune(self.model, sparsity=0.5, hold=True)  # held through the next epochs

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                                  keras.layers.Dense(2, name="out")])
        rk.apply_regularizers(model, {"*": rk.regularizers.L1(keras.optimizers.schedules.PolynomialDecay(0.0, 8, 0.01))})
        rk.apply_regularizers(model, {"out": rk.regularizers.ElasticNet(1e-3, 1e-3)}, weights="bias")
        model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    phase = rk.callbacks.ShrinkPhase(start_epoch=1, policy=rk.shrinking.SparsityTarget(0.75, score="magnitude", cut_every=2),
                                     validation_data=(x, y))
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, validation_data=(x, y), callbacks=[
        rk.callbacks.RegularizationScheduler(), PruneOnce(), rk.callbacks.SparsityMonitor(per_layer=False), phase])
    result = phase.result
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "shrink": [result.baseline, result.final, result.sparsity, result.cuts],
        "weights": [w.tolist() for w in model.get_weights()],
    }


def _patch_keras_for_multi_worker():
    """Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy before the
    first step, whatever the model (keras-team/keras#20585,
    tensorflow/tensorflow#72388): it reduces the nested first batch with
    `strategy.reduce`, and the scalar logs with `axis=0`. These stand-ins do
    the same reductions without the errors; nothing of keras_regkit is
    patched."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                break
            # Only the shapes matter: one replica's part of the batch will do.
            data_batch = tf.nest.map_structure(
                lambda v: self.distribute_strategy.experimental_local_results(v)[0], batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    reduce_per_replica = trainer.reduce_per_replica

    def reduce_scalars_too(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_scalars_too


WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op
    from test_distribute import _patch_keras_for_multi_worker, train_for_comparison  # imports Keras
    _patch_keras_for_multi_worker()
    run = train_for_comparison(strategy)
    run["replicas"] = strategy.num_replicas_in_sync
    print(json.dumps(run))
    """
)


def _free_loopback_ports(count):
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sockets[-1].bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_mirrored_strategy_matches_single_device(tmp_path):
    import tensorflow as tf

    try:
        ports = _free_loopback_ports(2)
    except OSError as error:
        pytest.skip(f"this machine cannot open TCP ports on 127.0.0.1 for the two workers: {error}")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    # gRPC would send loopback traffic through a proxy named in the environment.
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")}
    workers, outputs = [], []
    try:
        for index in range(2):
            outputs.append((tmp_path / f"worker{index}.out", tmp_path / f"worker{index}.err"))
            with open(outputs[-1][0], "w") as out, open(outputs[-1][1], "w") as err:
                workers.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER, os.path.dirname(__file__)], stdout=out, stderr=err,
                    env={**env, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                         "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}))
        one = train_for_comparison(tf.distribute.get_strategy())  # meanwhile, here
        deadline = time.monotonic() + 240
        while any(w.poll() is None for w in workers):
            # A worker that fails leaves the other waiting for it: stop at once.
            assert all(w.poll() in (None, 0) for w in workers), [e.read_text()[-3000:] for _, e in outputs]
            assert time.monotonic() < deadline, "the workers did not finish in 240 s"
            time.sleep(0.2)
        assert [w.returncode for w in workers] == [0, 0], [e.read_text()[-3000:] for _, e in outputs]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert one["history"]["reg_loss"][0] > 0 and one["history"]["sparsity"][-1] >= 0.5
    assert one["shrink"][2] == 0.75 and one["shrink"][3] > 1  # the shrink cut, more than once
    for out, _ in outputs:
        two = json.loads(out.read_text().strip().splitlines()[-1])
        assert two["replicas"] == 2
        assert sorted(two["history"]) == sorted(one["history"])
        for key, values in one["history"].items():
            np.testing.assert_allclose(two["history"][key], values, rtol=1e-5, atol=1e-7, err_msg=key)
        assert two["shrink"][2:] == one["shrink"][2:]
        np.testing.assert_allclose(two["shrink"][:2], one["shrink"][:2], rtol=1e-5)
        for a, b in zip(one["weights"], two["weights"]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
