"""The pruning core: what can be pruned, how it is scored, the one cut, and
holding the zeros.

- `units`: what a unit is and when it is dead (shared with `compact`).
- `scores`: what to cut first (`Magnitude`, `Curvature`, `Wanda`).
- `calibration`: input activation norms from unlabeled data (for `Wanda`).
- `cut`: the selection and the one cut (by count or threshold; global,
  per output unit, or within N:M groups).
- `hold`: `HoldZeros` keeps zeros at zero through training.
- `one_shot`: `prune`, a cut without training.

`prune` and the shrink are thin callers of `cut`.
"""

from keras_regkit.pruning.hold import HoldZeros, release_zeros
from keras_regkit.pruning.one_shot import PruneResult, prune
from keras_regkit.pruning.scores import Curvature, Magnitude, Score, Wanda

# `prune` and `release_zeros` are public at the package root.
__all__ = ["Curvature", "HoldZeros", "Magnitude", "PruneResult", "Score", "Wanda"]
