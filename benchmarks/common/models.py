"""The benchmark models and their one compile: each function takes the
`keras` module to use (Keras 3, or tf_keras in the TF-MOT venv)."""

from common.data import datasets

# bench_compact's default widths.
MLP_UNITS = (512, 256)
CNN_FILTERS = 128


def compile_model(keras, model, learning_rate=1e-3, regression=False):
    """Adam at `learning_rate`; a classifier gets sparse categorical cross
    entropy on logits and accuracy, a regression model mean squared error
    and mean absolute error."""
    if regression:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
        return
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def build_mlp(keras, n_features, units=(300, 100), name=None):
    """The demo's MLP: ReLU layers of `units`, ten logits."""
    return datasets.mlp(keras, n_features, units, name=name)


def build_cnn(keras, shape, filters=CNN_FILTERS):
    """The MNIST-1D CNN: three `filters`-wide Conv1D layers, a dense layer of
    `2 * filters` units, ten logits."""
    inputs = keras.Input(shape)
    x = keras.layers.Reshape(shape + (1,))(inputs)
    x = keras.layers.Conv1D(filters, 5, activation="relu")(x)
    x = keras.layers.Conv1D(filters, 3, activation="relu")(x)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(filters, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(2 * filters, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn")
