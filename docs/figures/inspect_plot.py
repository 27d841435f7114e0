"""Draws docs/figures/inspect.png: `keras-regkit inspect --plot` on the demo's
300-100 MLP, trained on digits and shrunk to 95 % exact zeros.

Run from the repository's root (scikit-learn and matplotlib needed):
    python docs/figures/inspect_plot.py
"""

import pathlib
import subprocess
import sys
import tempfile

import keras
from sklearn.datasets import load_digits

import keras_regkit as rk

OUT = pathlib.Path(__file__).with_name("inspect.png")


def main():
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x, y = (digits.data / 16).astype("float32"), digits.target
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(300, activation="relu", name="dense_300"),
                              keras.layers.Dense(100, activation="relu", name="dense_100"),
                              keras.layers.Dense(10, name="logits")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    rk.shrink(model, x, y, sparsity=0.95, epochs=10, batch_size=64)
    with tempfile.TemporaryDirectory() as workdir:
        path = pathlib.Path(workdir) / "shrunk.keras"
        model.save(path)
        # The command as a user runs it.
        subprocess.run([sys.executable, "-m", "keras_regkit_cli", "inspect", str(path), "--plot", str(OUT)],
                       check=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
