"""The datasets of the quality protocol: scikit-learn's digits and MNIST-1D,
split as the demo splits them (`keras_regkit/datasets.py`).

`keras_regkit/datasets.py` is NumPy only, and it is loaded here by its path
rather than as `keras_regkit.datasets`: `bench_shrink_quality.py
--old-package` imports `keras_regkit` from another checkout (one without
this module), and the TF-MOT baseline's own venv (tf_keras) has no
keras_regkit installed. Both then read the same data as the other runs.
"""

import importlib.util
import os

from common import ROOT


def _datasets_module():
    path = os.path.join(ROOT, "keras_regkit", "datasets.py")
    spec = importlib.util.spec_from_file_location("keras_regkit_datasets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


datasets = _datasets_module()
# Of the training split, held out for the checks.
VALIDATION_FRACTION = datasets.VALIDATION_FRACTION
# name -> a function of no argument (or of the validation fraction) that
# returns ((x, y), (x_val, y_val), (x_test, y_test)).
LOADERS = {name: (lambda fraction=VALIDATION_FRACTION, name=name: datasets.load(name, fraction))
           for name in datasets.NAMES}
