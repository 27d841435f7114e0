"""What the benchmarks share. Run a benchmark from the repository root as
`python benchmarks/NAME.py`: its folder is then first on `sys.path`, and
`import common` finds this package.

- `data`: the datasets of the quality protocol (the demo's splits);
- `models`: the benchmark models and how they are compiled;
- `protocol`: the quality protocol (baseline training, the reset to it
  before each shrink, the plain `fit` a shrink's wall time is divided by);
- `measure`: the one timing loop and the one file-size measure;
- `reporting`: result files (`RESULTS`), grouping rows over seeds, median
  and worst, and the row-by-row comparison of two result files.

Importing it puts this checkout's root first on `sys.path`, so that
`import keras_regkit` takes the package beside the benchmarks rather than
an installed one, and quiets TensorFlow's C++ start-up lines. Import it
before Keras or TensorFlow.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
# Every benchmark's figures: the README quotes them from here.
RESULTS = os.path.join(BENCHMARKS, "results")

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def result_path(name: str) -> str:
    """The path of the result file `name` in `RESULTS`."""
    return os.path.join(RESULTS, name)
