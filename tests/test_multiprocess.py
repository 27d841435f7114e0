"""The shrink across processes: Keras' `DataParallel` over `jax.distributed`
(two real processes on 127.0.0.1, gloo CPU collectives), each process
feeding its own half of the training and validation data. Every decision
of the shrink must come from counts over both halves, so both processes end
with the same weights and report the same result."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax", reason="the multi-process shrink runs under JAX's distributed runtime")
pytestmark = pytest.mark.slow

WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, port, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process,
                               initialization_timeout=120)
    import keras, numpy as np
    import keras_regkit as rk

    distribution = keras.distribution.DataParallel()
    distribution.auto_shard_dataset = False  # each process feeds its own half
    keras.distribution.set_distribution(distribution)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    xv = rng.normal(size=(256, 8)).astype("float32")
    yv = (xv[:, 0] + 0.5 * xv[:, 1] > 0).astype("int32")
    # The halves differ, so any decision taken from one alone would differ.
    part, val = slice(process * 256, (process + 1) * 256), slice(process * 128, (process + 1) * 128)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[part], y[part], epochs=5, batch_size=32, verbose=0)
    def hits():
        return (np.argmax(keras.ops.convert_to_numpy(model(xv[val], training=False)), -1) == yv[val]).tolist()

    start_hits = hits()
    kwargs = {"sparsity": dict(sparsity=0.9), "tolerance": dict(tolerance=0.05),
              "distill": dict(sparsity=0.9, distill=True)}[mode]
    result = rk.shrink(model, x[part], y[part], validation_data=(xv[val], yv[val]), epochs=3, batch_size=32,
                       cut_every=2, **kwargs)
    local = float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(xv[val], training=False)), -1) == yv[val]))
    print("RESULT " + json.dumps({
        "sparsity": result.sparsity, "baseline": result.baseline, "final": result.final,
        "outcome": result.outcome, "levels": result.levels, "local_final": local,
        "start_hits": start_hits, "end_hits": hits(),
        "weights": [w.tolist() for w in model.get_weights()]}), flush=True)
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [subprocess.Popen([sys.executable, str(script), str(i), port, mode], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=400)[0])
    finally:
        for worker in workers:
            worker.kill()
    results = []
    for worker, output in zip(workers, outputs):
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert worker.returncode == 0 and lines, output[-3000:]
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    return results


@pytest.mark.parametrize("mode", ["sparsity", "tolerance", "distill"])
def test_both_processes_end_with_the_same_weights_and_result(tmp_path, mode):
    first, second = _run_two_processes(tmp_path, mode)
    assert first["weights"] == second["weights"]
    for key in ("sparsity", "baseline", "final", "outcome", "levels"):
        assert first[key] == second[key], key
    # The reported accuracy is over both halves: the mean of each half's
    # own (the halves are the same size), not either one alone.
    assert first["final"] == pytest.approx((first["local_final"] + second["local_final"]) / 2)
    if mode == "tolerance":
        # The check's promise, over both halves: no more than the tolerance
        # lost beyond one standard error of the paired change.
        change = np.array(first["start_hits"] + second["start_hits"], float) - np.array(
            first["end_hits"] + second["end_hits"], float)
        assert first["levels"] and change.mean() - np.sqrt(np.sum(change**2)) / len(change) <= 0.05 + 1e-9
