"""`search_strength` in KerasTuner's distributed mode: a chief that serves
the oracle and a worker that runs the trials, two real processes over
127.0.0.1 (KerasTuner's gRPC oracle). The chief's result must hold every
trial the worker ran, stage 1 and stage 2."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("keras_tuner", reason="the strength search runs on KerasTuner (the `tune` extra)")
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras, numpy as np
    import keras_regkit as rk

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")

    def build():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    result = rk.search_strength(build, x[:96], y[:96], validation_data=(x[96:], y[96:]), low=1e-3, high=1e-1,
                                fine=2, epochs=2, patience=None, directory=sys.argv[1])
    print("RESULT " + json.dumps(None if result is None else
                                 {"best": result.best_strength, "rows": result.rows}), flush=True)
    """
)


def _free_port_pair():
    """Two consecutive free ports: stage 2 is served on the next one."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    pytest.fail("no two consecutive free ports on 127.0.0.1")


def test_chief_and_worker_share_one_search(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    port = _free_port_pair()
    base = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = {
        name: subprocess.Popen([sys.executable, str(script), str(tmp_path / "search")],
                               env={**base, "KERASTUNER_TUNER_ID": name}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for name in ("chief", "tuner0")
    }
    outputs = {}
    try:
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=400)[0]
    finally:
        for process in processes.values():
            process.kill()
    results = {}
    for name, output in outputs.items():
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert processes[name].returncode == 0 and lines, f"{name}:\n{output[-3000:]}"
        results[name] = json.loads(lines[-1].removeprefix("RESULT "))
    assert results["tuner0"] is None  # a worker returns nothing
    rows = results["chief"]["rows"]
    # Stage 1: the reference and the three decades; stage 2: fine values
    # around the best decade, all trained by the worker.
    assert {r["stage"] for r in rows} >= {"reference", "decade", "fine"}
    decades = sorted(r["strength"] for r in rows if r["stage"] == "decade")
    assert decades == pytest.approx([1e-3, 1e-2, 1e-1])
    assert results["chief"]["best"] in [r["strength"] for r in rows if r["strength"] > 0]
    assert all(r["val_loss"] == r["val_loss"] for r in rows)  # every trial finished (no NaN)
