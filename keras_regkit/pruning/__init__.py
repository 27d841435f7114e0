"""The pruning core: what can be pruned, how it is scored, the one cut, and
holding the zeros.

- `units`: what a unit is and when it is dead (shared with `compact`).
- `scores`: what to cut first (`Magnitude`, `Curvature`, `Wanda`).
- `calibration`: input activation norms from unlabeled data (for `Wanda`).
- `granularity`: what a cut removes one by one (`Weights`, `Units`,
  `Heads`, `NM`): its selection, ranking, dead count, ceiling and levels.
- `blocks`: whole residual blocks (`Blocks`, `granularity="block"`): what
  a block is, when it is removed, its score.
- `cut`: the one cut (by count or threshold; global, per output unit, or
  within N:M groups).
- `hold`: `HoldZeros` keeps zeros at zero through training.
- `one_shot`: `prune`, a cut without training.
- `allocation`: how `prune` shares a sparsity out across layers (`OWL`,
  `Sensitivity`).
- `layer_sensitivity`: `sensitivity`, each layer pruned alone, its metric
  drop.
- `reconstruction`: `prune_reconstructed`, one-shot pruning that updates
  the weights it keeps (SparseGPT), layer by layer; `sparsegpt` (the
  solver) and `linear_layers` (layers as one matrix product) under it.

`prune` and the shrink are thin callers of `cut`.
"""

from keras_regkit.pruning.allocation import OWL, Sensitivity
from keras_regkit.pruning.blocks import Blocks
from keras_regkit.pruning.granularity import NM, Granularity, Heads, Units, Weights
from keras_regkit.pruning.hold import HoldZeros, release_zeros
from keras_regkit.pruning.layer_sensitivity import SensitivityResult, sensitivity
from keras_regkit.pruning.one_shot import PruneResult, prune
from keras_regkit.pruning.reconstruction import ReconstructionResult, prune_reconstructed
from keras_regkit.pruning.scores import Curvature, Magnitude, Score, Wanda

# `prune` and `release_zeros` are public at the package root.
__all__ = [
    "Blocks", "Curvature", "Granularity", "Heads", "HoldZeros", "Magnitude", "NM", "OWL", "PruneResult", "ReconstructionResult",
    "Score", "Sensitivity", "SensitivityResult", "Units", "Wanda", "Weights", "prune_reconstructed", "sensitivity",
]
