"""search_strength: decades, then a fine grid, on KerasTuner."""

import math
import tempfile
import warnings

import keras
import numpy as np
import pytest

import keras_regkit as rk

from conftest import assert_refused_and_unchanged, compiled, infinite_dataset, row, tiny_data, tiny_mlp

pytest.importorskip("keras_tuner")


def teacher_data(seed=0, n=80, n_val=200, inputs=100, relevant=4):
    """A linear teacher with 4 weights of 0.5 among 100 inputs and noise 0.5.

    With mean squared error, an L1 strength alpha shrinks each weight by
    about alpha / 2: at 1 the teacher's 0.5 weights die (the signal is lost),
    at 0.01 and below the 96 irrelevant weights fit the noise of 80 samples
    (overfitting), so the decade around 0.1 is clearly best.
    """
    rng = np.random.default_rng(seed)
    w = np.zeros(inputs, "float32")
    w[:relevant] = 0.5
    x = rng.normal(size=(n + n_val, inputs)).astype("float32")
    y = (x @ w + 0.5 * rng.normal(size=n + n_val)).astype("float32")[:, None]
    return (x[:n], y[:n]), (x[n:], y[n:])


def linear_model(inputs=100):
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(1, name="linear")])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


class CountTrials(keras.callbacks.Callback):
    """Counts trainings; raises KeyboardInterrupt (as Ctrl-C would) when the
    `stop_at`-th one begins."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.trained, self.stop_at = 0, stop_at

    def on_train_begin(self, logs=None):
        if self.stop_at is not None and self.trained + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.trained += 1


def test_finds_the_decade_that_is_known_best_and_records_every_column(tmp_path):
    (x, y), validation = teacher_data()
    result = rk.search_strength(
        linear_model, x, y, validation_data=validation, penalty=rk.regularizers.L1, low=1e-2, high=1.0,
        fine=3, epochs=6, batch_size=8, patience=None, directory=str(tmp_path))
    # The decade centred on 0.1: from 10**-1.5 to 10**-0.5.
    assert 10**-1.5 <= result.best_strength <= 10**-0.5, str(result)
    stages = {r["strength"]: r["stage"] for r in result.rows}
    assert stages == {0.0: "reference", 0.01: "decade", 0.1: "decade", 1.0: "decade",
                      **{s: "fine" for s in rk.search.fine_grid(0.1, 3) if s != 0.1}}
    best, reference = result.best, result.reference
    assert best["val_loss"] < reference["val_loss"]
    # The penalty acted on the kernel (the data loss alone is reported).
    assert reference["penalty"] == 0 and best["penalty"] > 0
    assert set(best) >= {"val_loss", "penalty", "zeros", "near_zero", "epochs"}
    assert "best" in str(result).splitlines()[[r["strength"] for r in result.rows].index(result.best_strength) + 2]
    assert result.to_dict()["best_strength"] == result.best_strength


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    (x, y), validation = teacher_data(n=32, inputs=10)
    kwargs = dict(validation_data=validation, penalty=rk.regularizers.L1, low=1e-2, high=1e-1, fine=2,
                  epochs=1, patience=None, directory=str(tmp_path), objective="val_loss")

    def build():
        return linear_model(10)

    first = CountTrials(stop_at=3)  # Ctrl-C as the third trial starts
    with pytest.raises(KeyboardInterrupt):
        rk.search_strength(build, x, y, callbacks=[first], **kwargs)
    assert first.trained == 2

    second = CountTrials()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # standardised inputs: no warning
        result = rk.search_strength(build, x, y, callbacks=[second], **kwargs)
    # 3 stage-1 trials (reference, 0.01, 0.1) and 2 fine ones; 2 were done.
    assert len(result.rows) == 5
    assert second.trained == 5 - 2
    third = CountTrials()
    rk.search_strength(build, x, y, callbacks=[third], **kwargs)
    assert third.trained == 0


def test_warns_once_about_unstandardised_inputs_before_the_first_trial(tmp_path):
    (x, y), validation = teacher_data(n=16, inputs=6)
    x = x * np.array([1000.0, 1, 1, 1, 1, 0.5], "float32")
    trials = CountTrials(stop_at=1)
    with pytest.warns(UserWarning, match=r"standard deviations range from") as record, \
            pytest.raises(KeyboardInterrupt):
        rk.search_strength(lambda: linear_model(6), x, y, validation_data=validation, callbacks=[trials],
                           directory=str(tmp_path))
    assert len([w for w in record if "Standardise" in str(w.message)]) == 1


def test_a_search_without_a_directory_removes_the_folder_it_made(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes its folders
    (x, y), validation = teacher_data(n=16, inputs=6)
    result = rk.search_strength(lambda: linear_model(6), x, y, validation_data=validation, low=1e-2, high=1e-2,
                                fine=1, epochs=1, batch_size=8, patience=None)
    assert [r["strength"] for r in result.rows] == [0.0, 1e-2]
    assert not list(tmp_path.glob("keras_regkit_search_*"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(low=0.0), ValueError, r"0 < low <= high.*low=0.0"),
    (dict(low=1e-2, high=1e-3), ValueError, r"low=0.01, high=0.001"),
    (dict(high=1e300), ValueError, r"argument `high`.*3.402823e\+38.*high=1e\+300"),
    (dict(penalty=lambda s: s), TypeError, r"penalty\(1e-06\) returned 1e-06"),
    (dict(objective="val_accuracy"), ValueError, r"'val_accuracy' is not recorded.*'val_loss'"),
    (dict(layers="encoder*"), ValueError, r"encoder\*"),
    (dict(validation_data=None), ValueError, r"validation_data=None"),
    (dict(shrink={"sparsity": 1.5}), ValueError, r"sparsity"),
    (dict(shrink={"sparsity": 0.5, "unknown": 1}), TypeError, r"argument `shrink`.*unknown"),
    (dict(shrink={"sparsity": 0.5, "epochs": 0}), ValueError, r"shrink\['epochs'\]=0"),
    (dict(shrink={"sparsity": 0.5, "validation_data": None}), ValueError, r"argument `shrink`.*'validation_data'"),
    # What shrink() refuses for this model (a regression: no top-1 accuracy to guard).
    (dict(shrink={"tolerance": 0.02, "epochs": 1}), ValueError, r"argument `shrink`.*monitor="),
    (dict(directory=__file__), ValueError, r"argument `directory`: it names a file"),
    (dict(directory=__file__ + "/sub"), ValueError, r"argument `directory`: cannot create"),
])
def test_bad_input_fails_before_the_first_trial(tmp_path, kwargs, error, match):
    (x, y), validation = teacher_data(n=16, inputs=6)
    trials = CountTrials()
    arguments = {"validation_data": validation, "directory": str(tmp_path), "callbacks": [trials], **kwargs}
    with pytest.raises(error, match=match):
        rk.search_strength(lambda: linear_model(6), x, y, **arguments)
    assert trials.trained == 0


def classifier():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_a_trial_that_fails_is_left_out_with_a_warning_and_the_search_goes_on(tmp_path):
    (x, y), validation = teacher_data(n=16, inputs=6)

    def penalty(strength):
        if strength > 0.05:
            raise RuntimeError(f"no penalty at {strength}")
        return rk.regularizers.L1(strength)

    with pytest.warns(UserWarning, match=r"1 decade trial\(s\) failed .* \[0\.1\].*no penalty at 0.1"):
        result = rk.search_strength(lambda: linear_model(6), x, y, validation_data=validation, penalty=penalty,
                                    low=1e-2, high=1e-1, fine=1, epochs=1, patience=None, directory=str(tmp_path))
    assert [r["strength"] for r in result.rows] == [0.0, 0.01]
    assert result.best_strength == 0.01


def test_shrinks_every_trial_in_the_tolerance_mode_as_shrink_accepts_it(tmp_path):
    (x, y), validation = teacher_data(n=32, inputs=6)
    y, validation = (y > 0).astype("int32"), (validation[0], (validation[1] > 0).astype("int32"))
    result = rk.search_strength(classifier, x, y, validation_data=validation, low=1e-2, high=1e-2, fine=1,
                                epochs=1, patience=None, shrink={"tolerance": 0.02, "epochs": 1},
                                directory=str(tmp_path))
    assert [r["strength"] for r in result.rows] == [0.0, 0.01]
    assert all({"shrunk_val_accuracy", "shrunk_zeros"} <= set(r) for r in result.rows)


def test_grids():
    assert rk.search.decades(1e-6, 1e-1) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert rk.search.decades(2e-3, 1e-1) == [2e-3, 2e-2]
    grid = rk.search.fine_grid(1e-3, 5)
    # Equal steps on the log scale, within half a decade of the centre.
    steps = np.diff(np.log10(grid))
    assert np.allclose(steps, 0.2, atol=1e-4) and math.isclose(grid[2], 1e-3)
    assert 10**-3.5 < grid[0] and grid[-1] < 10**-2.5


def test_cli_quick_search_prints_the_table_writes_the_plot_and_resumes(tmp_path, capsys):
    import json

    from keras_regkit import cli

    plot, directory = tmp_path / "path.png", tmp_path / "state"
    argv = ["search", "--quick", "--no-progress", "--directory", str(directory)]
    # Digits' rarely-inked border pixels vary 235x less than the others: the CLI says so.
    with pytest.warns(UserWarning, match="Standardise"):
        assert cli.main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("strength  "):out.index("best strength")].splitlines()[2:]
    rows = [line.split() for line in lines if not line.startswith("(")]  # "(no strength beats ...)"
    assert [row[1] for row in rows] == ["reference", "fine", "decade", "fine"]
    for row in rows:
        assert 0.1 < float(row[3]) <= 1  # val_accuracy: above chance
    assert sum("<- best" in line for line in lines) == 1
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # Rerun on the same directory: every trial is found there.
    with pytest.warns(UserWarning, match="Standardise"):
        assert cli.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out[out.index("{"):])
    assert [f"{r['val_accuracy']:.4g}" for r in data["rows"]] == [row[3] for row in rows]


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def tiny_search(model, **kwargs):
    x, y = tiny_data()
    kwargs.setdefault("validation_data", (x, y))
    return rk.search_strength(lambda: compiled(tiny_mlp()), x, y, **kwargs)


BAD_INPUT = [
    # Booleans: a string is truthy, so "no" and "False" would mean True.
    row("search-overwrite-str", lambda m: tiny_search(m, overwrite="no"), TypeError, "overwrite"),
    row("search-verbose-str", lambda m: tiny_search(m, verbose="1"), TypeError, "verbose"),
    row("search-build_model-int", lambda m: rk.search_strength(5, *tiny_data(), validation_data=tiny_data()),
        TypeError, "build_model"),
    row("search-penalty-int", lambda m: tiny_search(m, penalty=5), TypeError, "penalty"),
    row("search-callbacks-none", lambda m: tiny_search(m, callbacks=None), TypeError, "callbacks"),
    row("search-callbacks-int", lambda m: tiny_search(m, callbacks=[5]), TypeError, "callbacks"),
    row("search-batch_size-zero", lambda m: tiny_search(m, batch_size=0), ValueError, "batch_size"),
    row("search-batch_size-str", lambda m: tiny_search(m, batch_size="8"), TypeError, "batch_size"),
    # Hangs: trials read their data to the end.
    row("search-infinite-x", lambda m: rk.search_strength(lambda: compiled(tiny_mlp()), infinite_dataset(),
                                                          validation_data=tiny_data()), ValueError, "`x`"),
    row("search-infinite-validation", lambda m: tiny_search(m, validation_data=infinite_dataset()), ValueError,
        "validation_data"),
    row("search-directory-int", lambda m: tiny_search(m, directory=5), TypeError, "directory"),
    row("search-project_name-int", lambda m: tiny_search(m, project_name=5), TypeError, "project_name"),
]


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("call, error, fragment, prepare", BAD_INPUT)
def test_bad_input_raises_and_leaves_the_model_unchanged(call, error, fragment, prepare):
    assert_refused_and_unchanged(call, error, fragment, prepare)
