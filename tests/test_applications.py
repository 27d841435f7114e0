"""Models nobody here wrote: `keras.applications` at 32x32 with random
weights. Penalties on every kernel act in training and survive a
`safe_mode` reload; whole filters pruned and `compact`ed leave the outputs
as they were."""

import keras
import numpy as np
import pytest

import keras_regkit as rk
from keras_regkit.regularizers import L2

pytestmark = pytest.mark.slow  # whole models: JAX compiles one program per op and shape

APPLICATIONS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10),
    "ResNet50": lambda: keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10),
}


def penalty(model):
    return float(keras.ops.convert_to_numpy(rk.attach.total_penalty(model)))


@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_application_penalties_train_reload_and_compact(name, tmp_path):
    if name == "ResNet50" and keras.backend.backend() != "tensorflow":
        pytest.skip("ResNet50's 23.6M weights take minutes eagerly on a CI CPU; it runs under TensorFlow, "
                    "and MobileNetV2 covers this backend")
    model = APPLICATIONS[name]()
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    attached = rk.apply_regularizers(model, {"*": L2(1e-4)})
    kernels = list(rk.iter_weights(model, ["kernel", "depthwise_kernel"]))
    assert len(attached) == len([r for r in kernels if r.kind == "kernel"]) == len(model.losses)
    # What Keras adds to the training loss: every kernel's penalty.
    assert penalty(model) == pytest.approx(penalty_of(attached), rel=1e-5)

    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert penalty(reloaded) == pytest.approx(penalty(model), rel=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-7)

    rk.prune(model, sparsity=0.3, granularity="unit")
    result = rk.compact(model)
    assert result.params_after < result.params_before
    if name == "MobileNetV2":
        # An expansion unit is cut with the depthwise channel that reads it: every such pair goes.
        assert [layer for layer in result.kept if layer.endswith(("_expand", "_depthwise"))] == []
    np.testing.assert_allclose(keras.ops.convert_to_numpy(result.model(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-5)


def penalty_of(attachment):
    return 1e-4 * sum(float(np.square(keras.ops.convert_to_numpy(ref.variable)).sum()) for ref in attachment.refs)
