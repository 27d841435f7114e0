"""Runs every script in examples/ with --quick, in-process, and checks what
it reports: the examples are documentation that must keep working."""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

pytest.importorskip("sklearn")

BACKEND = keras.backend.backend()
tensorflow_script = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="a TensorFlow script (tf.GradientTape, tf.data, tf.saved_model)"
)
batch_schedules = pytest.mark.skipif(
    BACKEND == "jax", reason="moves its schedules per batch, which JAX refuses (RegularizationScheduler)"
)

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--quick", *args])


@batch_schedules
def test_expabs_cnn_learns_with_a_ramped_expabs_penalty():
    out = run_example("expabs_cnn")
    assert out["accuracy"] > 0.5  # chance is 0.1
    strengths = out["strengths"]
    assert strengths[0] == 0.0 and strengths[-1] == pytest.approx(2e-4)
    assert out["history"]["reg_loss"][0] == 0.0 and out["history"]["reg_loss"][-1] > 0
    assert all("ExpAbs" in s.regularizer for s in out["report"].layers)
    assert "near_zero" in out["history"]


@batch_schedules
def test_per_layer_schedules_move_separately_and_survive_reload(tmp_path):
    out = run_example("per_layer_schedules", "--workdir", str(tmp_path))
    s = out["strengths"]
    assert set(s) == {"strength/encoder_1/kernel", "strength/encoder_2/kernel",
                      "strength/head/kernel/l1", "strength/head/kernel/l2"}
    assert np.all(np.diff(s["strength/encoder_1/kernel"]) > 0)  # ramps up
    assert np.all(np.diff(s["strength/encoder_2/kernel"]) < 0)  # decays
    assert s["strength/head/kernel/l1"][0] == 0 and s["strength/head/kernel/l1"][-1] == pytest.approx(1e-4)
    regs = out["regularizers"]
    assert [type(regs[k]).__name__ for k in ("encoder_1", "encoder_2", "head")] == ["L1", "L2", "ElasticNet"]
    assert {r.step for r in regs.values()} == {out["steps_per_epoch"] * out["epochs"]}
    before, after = out["penalty"]
    assert before > 0 and after == pytest.approx(before, rel=1e-6)
    assert (tmp_path / "penalised.keras").exists()


@batch_schedules
def test_lstm_kernel_and_recurrent_kernel_get_their_own_penalties():
    out = run_example("lstm_penalties")
    regs = out["regularizers"]
    assert regs["lstm/lstm_cell"].startswith("L1(alpha=0.0001")
    assert regs["lstm/lstm_cell/recurrent_kernel"].startswith("L2(alpha=DelayedRamp")
    assert regs["lstm/lstm_cell/bias"] is None and regs["classifier"] is None
    assert out["strength_key"] == "strength/lstm/lstm_cell/recurrent_kernel"
    assert out["strengths"][0] == 0 and np.all(np.diff(out["strengths"]) > 0)
    assert out["accuracy"] > 0.3


@tensorflow_script
def test_shrink_then_export_serves_the_same_predictions(tmp_path):
    out = run_example("shrink_and_export", "--workdir", str(tmp_path))
    result = out["result"]
    assert result.sparsity == pytest.approx(0.9, abs=1e-4) and result.outcome == "pruned"
    assert result.final >= result.baseline - 0.1  # 3 quick epochs to recover 90 % zeros
    np.testing.assert_allclose(out["served"], out["expected"], atol=1e-5)
    assert out["reloaded_sparsity"] == pytest.approx(result.sparsity)
    np.testing.assert_allclose(out["reloaded_predictions"], out["expected"], atol=1e-5)


@tensorflow_script
def test_custom_loop_penalty_follows_optimizer_step_and_shrinks_weights():
    out = run_example("custom_training_loop")
    penalised, plain = out["penalised"], out["unpenalised"]
    strengths = [row["strength"] for row in penalised["log"]]
    assert strengths[0] == 0 and strengths[-1] == pytest.approx(1e-3) and strengths[1] > 0
    steps = [row["step"] for row in penalised["log"]]
    assert steps[1] == 2 * steps[0] and steps[-1] == len(steps) * steps[0]  # optimizer.iterations
    assert all(row["penalty"] == 0 for row in plain["log"])
    assert penalised["l1"] < 0.85 * plain["l1"]
    assert penalised["near_zero"] > plain["near_zero"]


def test_structured_shrink_and_compact_removes_dead_filters(tmp_path):
    out = run_example("structured_shrink_and_compact", "--workdir", str(tmp_path))
    compacted = out["compacted"]
    dead = out["result"].dead_units
    assert out["result"].unit_sparsity == pytest.approx(0.5, abs=0.01)
    assert sum(d for d, _ in dead.values()) > 0
    # Every dead unit of the hidden layers is gone (valid padding and Dense
    # consumers: nothing needs keeping), and the parameters with them.
    assert not compacted.kept and not compacted.skipped
    for name in ("conv1", "conv2", "dense"):
        before, after = compacted.units[name]
        assert after == before - dead[name][0]
    assert compacted.params_after < compacted.params_before
    assert out["max_diff"] < 1e-4
    np.testing.assert_allclose(out["reloaded_predictions"], out["predictions"], rtol=1e-6, atol=1e-6)
