import json
import re
import subprocess
import sys
import tempfile
import warnings

import pytest

from keras_regkit import cli

from conftest import nan_inf_kernel_model, right_checks, run_with_fixtures, unbuilt


@pytest.mark.slow  # trains every method of the demo
def test_quick_demo_trains_every_method_shrinks_and_prints_the_table(capsys, tmp_path, monkeypatch):
    plot = tmp_path / "demo.png"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's files go
    assert cli.main(["demo", "--quick", "--no-progress", "--plot", str(plot)]) == 0
    assert plot.exists() and not list(tmp_path.glob("keras_regkit_demo_*"))  # its saved models are removed
    out = capsys.readouterr().out
    lines = out[out.index("test acc"):].splitlines()
    rows = [line for line in lines[2:] if line and not line.startswith(("(", "wrote"))]
    names = [row[:20].strip() for row in rows]
    assert names == ["none", "L2", "L1 (proximal)", "ExpAbs (scheduled)"]
    for name, row in zip(names, rows):
        accuracy, trained_zeros, shrunk, zeros, size, before = row[20:].split()
        assert float(accuracy) > 0.5 and float(shrunk) > 0.5  # far above chance (0.1)
        assert float(zeros.rstrip("%")) > 10
        # Only the proximal penalty leaves exact zeros from training alone.
        assert (float(trained_zeros.rstrip("%")) > 5) == (name == "L1 (proximal)"), row
        # Exact zeros make the saved file compress better.
        assert int(size.rstrip("KB")) < int(before.rstrip("KB"))
    assert "checked identical" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--epochs", "x"], ["demo", "--dataset", "cifar"], ["fly"]])
def test_bad_arguments_give_one_line_error_and_nonzero_exit(argv):
    # The console script's entry point (`keras-regkit` runs `keras_regkit_cli:main`).
    result = subprocess.run([sys.executable, "-m", "keras_regkit_cli", *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("keras-regkit")


@pytest.mark.parametrize("flags, int8", [([], False), (["--int8"], True), (["--int8", "dynamic"], "dynamic"),
                                         (["--int8", "auto"], "auto")])
def test_export_int8_flag_becomes_exports_int8_argument(flags, int8):
    import keras_regkit_cli

    args = keras_regkit_cli.parse_args(["export", "m.keras", "m.tflite", *flags])
    assert args.int8 == int8


def test_search_into_a_file_gives_one_line_error_and_nonzero_exit(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert cli.main(["search", "--quick", "--no-progress", "--directory", str(not_a_folder)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("keras-regkit search: Invalid value for argument `directory`")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import keras

    from keras_regkit.regularizers import L1

    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, name="a", kernel_regularizer=L1(0.1)),
        keras.layers.Dense(2, name="b", kernel_initializer="zeros"),
    ])
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return str(path)


def test_inspect_prints_the_report_table(saved_model, capsys):
    assert cli.main(["inspect", saved_model]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if not line.startswith("-")}
    assert rows["a"][-1] == "L1(alpha=0.1)" and rows["b"][2] == "100.0%"
    assert rows["total"][1] == "18"


def test_inspect_json_and_plot(saved_model, tmp_path, capsys):
    import json

    plot = tmp_path / "h.png"
    assert cli.main(["inspect", saved_model, "--json", "--all-weights", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    data = json.loads(out[: out.rindex("}") + 1])
    assert [layer["name"] for layer in data["layers"]] == ["a", "a/bias", "b", "b/bias"]
    assert data["total"]["zeros"] == 3 + 6 + 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", [None, b"not a zip file", b"PK\x03\x04 truncated"])
def test_inspect_bad_file_is_one_line_error(tmp_path, content, capsys):
    # In process: a subprocess would spend ~30 s importing TensorFlow per file
    # on a CI CPU; the start-up output is checked once, below.
    path = tmp_path / "broken.keras"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"keras-regkit inspect: cannot load '{path}'")


def test_inspect_model_without_kernels_reports_its_other_weights(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 2, name="emb"),
                              keras.layers.LayerNormalization(name="norm")])
    path = tmp_path / "emb.keras"
    model.save(path)
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "emb/embeddings" in out and "norm/gamma" in out


def test_help_answers_without_importing_keras_or_tensorflow():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_regkit_cli", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: keras-regkit")
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not imported & {"keras_regkit", "keras", "tensorflow", "jax", "torch"}


@pytest.mark.slow  # a fresh Python that imports TensorFlow
def test_python_m_keras_regkit_runs_the_command_too():
    result = subprocess.run([sys.executable, "-m", "keras_regkit", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("usage: keras-regkit")


@pytest.mark.slow  # a fresh Python that imports TensorFlow
def test_inspect_prints_no_tensorflow_start_up_lines(saved_model):
    result = subprocess.run(
        [sys.executable, "-m", "keras_regkit_cli", "inspect", saved_model],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stdout.startswith("sequential")
    # TensorFlow's C++ log lines ("I0000 00:00:...", "E0000 ...") and absl's.
    assert not re.search(r"^[IWEF]\d{4} |absl|cuInit|cuda", result.stderr, re.MULTILINE), result.stderr


def test_inspect_lists_the_dropped_input_features(tmp_path, capsys):
    import json

    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((5,), name="x"), keras.layers.Dense(3), keras.layers.Dense(2)])
    kernel = np.ones((5, 3), "float32")
    kernel[[0, 2]] = 0.0
    model.layers[0].kernel.assign(kernel)
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert cli.main(["inspect", path]) == 0
    assert "input 'x': 2 of 5 features dropped (no weight reads them): [0, 2]" in capsys.readouterr().out
    assert cli.main(["inspect", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dropped_inputs"] == {"x": {"dropped": [0, 2], "features": 5}}


# -- bad and unusual input: the tables' helpers are in conftest -----------------

def right_cli_inspect_counts_nan_as_nonfinite(tmp_path, capsys):
    path = str(tmp_path / "m.keras")
    nan_inf_kernel_model().save(path)
    assert cli.main(["inspect", path, "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["zeros"], total["nonfinite"], total["sparsity"]) == (0, 2, 0.0)


def right_cli_refuses_a_plot_it_cannot_write_before_any_work(capsys):
    assert cli.main(["demo", "--quick", "--plot", "/no/such/dir/p.png"]) == 1
    assert "cannot write plot '/no/such/dir/p.png'" in capsys.readouterr().err


def right_cli_inspect_of_an_unbuilt_model_says_build_it(tmp_path, capsys):
    path = str(tmp_path / "unbuilt.keras")
    with warnings.catch_warnings():  # Keras' own "not yet been built": the point here
        warnings.simplefilter("ignore")
        unbuilt().save(path)
    assert cli.main(["inspect", path]) == 1
    assert "build the model first" in capsys.readouterr().err


RIGHT = right_checks(
    right_cli_inspect_counts_nan_as_nonfinite,
    right_cli_refuses_a_plot_it_cannot_write_before_any_work,
    right_cli_inspect_of_an_unbuilt_model_says_build_it,
)


@pytest.mark.clear_session_per_module
@pytest.mark.parametrize("check", RIGHT)
def test_unusual_input_gives_the_right_result(check, request):
    run_with_fixtures(check, request)


# -- sensitivity: each layer pruned alone, from a saved model and a data file ----

@pytest.fixture(scope="module")
def saved_compiled_model_and_data(tmp_path_factory):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="hidden"),
                              keras.layers.Dense(4, name="out")])
    model.compile("sgd", "mse", metrics=["mae"])
    folder = tmp_path_factory.mktemp("sensitivity")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")
    model.save(folder / "m.keras")
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "inputs_only.npz", x=x)
    return str(folder / "m.keras"), str(folder / "data.npz"), model, x, y


def test_sensitivity_of_a_saved_model_is_the_librarys_table(saved_compiled_model_and_data, capsys, tmp_path):
    import keras_regkit as rk

    path, data, model, x, y = saved_compiled_model_and_data
    expected = rk.pruning.sensitivity(model, (x, y), levels=(0.5, 0.9))
    assert cli.main(["sensitivity", path, data, "--levels", "0.5", "0.9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "mae" and report["levels"] == [0.5, 0.9]
    for name, values in expected.values.items():
        assert report["layers"][name]["values"] == pytest.approx(list(values), rel=1e-5)
    plot = tmp_path / "s.png"
    assert cli.main(["sensitivity", path, data, "--levels", "0.5", "--loss", "mse", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "loss drop when one layer alone is pruned" in out and "hidden" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, fragment", [
    (["--levels", "1.5"], "Invalid value for argument `levels`"),
    (["--metric", "accuracy"], "argument `metric`: model.evaluate reports ['loss', 'mae']"),
    (["--layers", "nothing*"], "matched no layer"),
])
def test_sensitivity_bad_arguments_are_one_line_errors(saved_compiled_model_and_data, capsys, extra, fragment):
    path, data, *_ = saved_compiled_model_and_data
    assert cli.main(["sensitivity", path, data, *extra]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("keras-regkit sensitivity: ") and fragment in error[0], error


def test_sensitivity_needs_targets_and_a_loss(saved_compiled_model_and_data, capsys, tmp_path):
    import keras

    path, data, *_ = saved_compiled_model_and_data
    folder = path.rsplit("/", 1)[0]
    assert cli.main(["sensitivity", path, f"{folder}/inputs_only.npz"]) == 1
    assert "needs the targets: expected a .npz file with arrays x and y" in capsys.readouterr().err
    uncompiled = str(tmp_path / "u.keras")
    keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)]).save(uncompiled)
    assert cli.main(["sensitivity", uncompiled, data]) == 1
    assert "was saved without compile(): give --loss" in capsys.readouterr().err
    assert cli.main(["sensitivity", str(tmp_path / "missing.keras"), data]) == 1
    assert "cannot load" in capsys.readouterr().err
