"""`compact`: a smaller model without the dead units.

- `rebuild`: the graph analysis and the rebuilt layers (Dense, convolutions,
  normalization, merges).
- `feedforward`: the feed-forward blocks inside transformer layers (KerasHub),
  and the re-traced graph (`flatten`) in which transformer layers are rebuilt.
- `attention`: attention layers rebuilt with fewer heads.

What a dead unit is lives in `keras_regkit.pruning.units`.
"""

from keras_regkit.compacting.rebuild import CompactResult

__all__ = ["CompactResult"]
