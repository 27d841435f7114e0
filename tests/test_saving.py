import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L1, L2, Combined, ElasticNet, ExpAbs
from keras_regkit.schedules import DelayedRamp

from conftest import SERIALIZABLE_SCHEDULE, right_checks, run_with_fixtures, tiny_data, tiny_mlp

BACKEND = keras.backend.backend()
# JAX moves schedules per epoch only; the fits below pass `initial_epoch` so
# that the epoch index, like the optimizer's count, keeps growing.
MODE = "epoch" if BACKEND == "jax" else "batch"

RELOAD_AND_DESCRIBE = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras, numpy as np
    import keras_regkit
    model = keras.saving.load_model(sys.argv[1])  # safe_mode=True, no custom_objects
    sys.path.insert(0, sys.argv[2])
    from test_saving import describe  # after the load: it must not need our imports
    out = describe(model)
    out["iterations"] = int(model.optimizer.iterations)
    out["prediction"] = model.predict(np.ones((2, 6), "float32"), verbose=0).tolist()
    print(json.dumps(out))
    """
)


def describe(model):
    out = {}
    for ref in rk.iter_weights(model, list(rk.weights.WEIGHT_KINDS)):
        reg = ref.regularizer
        if reg is not None:
            out[f"{ref.path}:{ref.kind}"] = {
                "class": type(reg).__name__,
                "config": reg.get_config(),
                "strengths": reg.current_strengths(),
                "value": float(keras.ops.convert_to_numpy(reg(ref.variable))),
            }
    return out


def trained_model_with_every_penalty():
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="a", kernel_regularizer=ExpAbs(DelayedRamp(1e-3, 2, 10), scale=0.5))],
        name="inner",
    )
    inputs = keras.Input((6,))
    x = inner(inputs)
    x = keras.layers.Dense(8, name="b", kernel_regularizer=ElasticNet(l1=1e-3, l2=keras.optimizers.schedules.PolynomialDecay(0.0, 20, 1e-2)))(x)
    outputs = keras.layers.Dense(4, name="c")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    x_train, y_train = tiny_data()
    model.fit(x_train, y_train, batch_size=8, epochs=2, verbose=0, callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    # Attached after training: must survive the round trip too.
    rk.apply_regularizers(model, {"c": L1(keras.optimizers.schedules.ExponentialDecay(1e-2, 5, 0.5))})
    rk.apply_regularizers(model, {"b": L2(3e-3)}, weights="bias")
    model.fit(x_train, y_train, batch_size=8, epochs=3, initial_epoch=2, verbose=0,
              callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    return model


@pytest.mark.slow  # a fresh Python that imports TensorFlow
def test_reloads_in_fresh_process_with_same_penalties_strengths_and_step(tmp_path):
    model = trained_model_with_every_penalty()
    path = str(tmp_path / "model.keras")
    model.save(path)
    expected = describe(model)
    assert len(expected) == 4
    assert int(model.optimizer.iterations) == 12
    if MODE == "batch":
        # Built in: follows the optimizer from step 0. Attached after 8 steps:
        # its schedule starts at its own step 0 then.
        assert expected["inner/a:kernel"]["config"]["step"] == 12
        assert expected["c:kernel"]["config"]["step"] == 4
    else:  # the index of the last epoch, for every schedule
        assert expected["inner/a:kernel"]["config"]["step"] == expected["c:kernel"]["config"]["step"] == 2

    result = subprocess.run(
        [sys.executable, "-c", RELOAD_AND_DESCRIBE, path, os.path.dirname(__file__)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded.pop("iterations") == 12
    np.testing.assert_allclose(reloaded.pop("prediction"), model.predict(np.ones((2, 6), "float32"), verbose=0), rtol=1e-6)
    for key, want in expected.items():
        got = reloaded[key]
        assert got["class"] == want["class"] and got["config"] == want["config"], key
        assert got["strengths"] == pytest.approx(want["strengths"], rel=1e-6), key
        assert got["value"] == pytest.approx(want["value"], rel=1e-5), key


def test_reloaded_model_trains_on_from_the_saved_schedule_position(tmp_path):
    model = trained_model_with_every_penalty()
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x, y = tiny_data()
    for m in (model, reloaded):
        m.fit(x, y, batch_size=8, epochs=4, initial_epoch=3, verbose=0, shuffle=False,
              callbacks=[rk.callbacks.RegularizationScheduler(MODE)])
    for a, b in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    step = 8 if MODE == "batch" else 3
    assert reloaded.get_layer("c").kernel_regularizer.step == model.get_layer("c").kernel_regularizer.step == step


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras 3.15's model.export fails under PyTorch 2.13 for any model, with or without our "
    "penalties (torch.export: 'mismatch between the structure of inputs and dynamic_shapes')",
)
def test_export_to_saved_model_serves_the_same_predictions(tmp_path):
    import tensorflow as tf

    model = trained_model_with_every_penalty()
    model.export(str(tmp_path / "exported"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "exported"))
    x = np.ones((3, 6), "float32")
    np.testing.assert_allclose(served.serve(x).numpy(), model.predict(x, verbose=0), rtol=1e-6)


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def right_custom_objects_loads_every_class_of_ours(tmp_path):
    objects = rk.custom_objects()
    ours = {name for name in keras.saving.get_custom_objects() if name.startswith("keras_regkit>")}
    assert set(objects) == ours and "keras_regkit>L1" in ours and "keras_regkit>Combined" in ours
    model = tiny_mlp(kernel_regularizer=Combined([L1(SERIALIZABLE_SCHEDULE), ExpAbs(0.1)]))
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, custom_objects=objects)
    assert repr(reloaded.get_layer("out").kernel_regularizer) == repr(model.get_layer("out").kernel_regularizer)


RIGHT = right_checks(right_custom_objects_loads_every_class_of_ours)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)


def test_readme_says_import_keras_regkit_before_load_model():
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert "import keras_regkit" in readme and "custom_objects()" in readme
