"""The built wheel carries what the package promises: the license text,
PEP 561's `py.typed`, and the command's entry point."""

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy: a build in the working tree writes build/ and
    # *.egg-info there. No build isolation: no network needed.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "keras_regkit_cli.py"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "keras_regkit", source / "keras_regkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("keras_regkit-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_apache_license_text(wheel):
    licenses = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert licenses, wheel.namelist()
    text = wheel.read(licenses[0]).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (ROOT / "LICENSE").read_text()
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata


def test_the_wheel_carries_py_typed_so_type_checkers_read_the_hints(wheel):
    assert "keras_regkit/py.typed" in wheel.namelist()


def test_the_wheel_carries_the_command_and_its_entry_point_outside_the_package(wheel):
    # Outside `keras_regkit`, whose import loads Keras: see keras_regkit_cli.py.
    assert "keras_regkit_cli.py" in wheel.namelist()
    entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")))
    assert "keras-regkit = keras_regkit_cli:main" in entry_points.decode()
    assert not [n for n in wheel.namelist() if n.startswith(("tests/", "benchmarks/"))]
