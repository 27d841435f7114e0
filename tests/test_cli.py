import subprocess
import sys

import pytest

from keras_regkit import cli


def test_quick_demo_trains_every_method_and_prints_the_table(capsys):
    assert cli.main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("test acc"):].splitlines()[1:]
    assert [row.split()[0] for row in table] == ["none", "L2(1e-4)", "L1(1e-4)", "ExpAbs(ramp"]
    # Every method learns digits far above chance (10 %).
    assert all(float(row.split()[-3]) > 0.5 for row in table)


@pytest.mark.parametrize("argv", [["demo", "--epochs", "0"], ["demo", "--epochs", "x"], ["fly"]])
def test_bad_arguments_give_one_line_error_and_nonzero_exit(argv):
    result = subprocess.run([sys.executable, "-m", "keras_regkit", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("keras-regkit")
