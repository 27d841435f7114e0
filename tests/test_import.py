"""`import keras_regkit` has no side effects: it leaves `sys.argv` and file
descriptors alone, even in a process that looks like the command line (the
command's start-up is `keras_regkit_cli`'s)."""

import json
import subprocess
import sys

import pytest

# Records every change of a file descriptor and what the import does to
# `sys.argv`, then reports them as JSON on stdout.
IMPORT_UNDER_FAKE_ARGV = """
import json, os, sys
sys.argv = {argv!r}
argv = list(sys.argv)
fd_changes = []
for name in ("dup2", "close", "closerange"):
    def record(*args, _name=name, _original=getattr(os, name)):
        if _name != "close" or args[0] <= 2:  # closing its own files is the import's business
            fd_changes.append([_name, *args])
        return _original(*args)
    setattr(os, name, record)
stderr = os.fstat(2)
import keras_regkit
after = os.fstat(2)
print(json.dumps({{"argv": sys.argv == argv, "fd_changes": fd_changes,
                   "stderr_same": (stderr.st_dev, stderr.st_ino) == (after.st_dev, after.st_ino)}}))
"""


@pytest.mark.parametrize("argv", [["keras-regkit", "--help"], ["keras-regkit", "inspect", "missing.keras"],
                                  ["keras-regkit", "fly"]])
def test_import_leaves_argv_and_file_descriptors_alone_under_a_command_line_argv(argv):
    result = subprocess.run([sys.executable, "-c", IMPORT_UNDER_FAKE_ARGV.format(argv=argv)],
                            capture_output=True, text=True, timeout=300)
    # It neither exits (as `--help` or a bad command would) nor prints usage.
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" not in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"argv": True, "fd_changes": [], "stderr_same": True}
