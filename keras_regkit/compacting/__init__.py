"""`compact`: a smaller model without the dead units.

- `rebuild`: `compact` itself: the new config, weights and report.
- `analysis`: which channels of the graph can go (each layer planned by
  its registered kind's compaction, see `keras_regkit.layers`).
- `result`: `CompactResult`.
- `feedforward`: the feed-forward blocks inside transformer layers (KerasHub),
  and the re-traced graph (`flatten`) in which transformer layers are rebuilt.
- `attention`: attention layers rebuilt with fewer heads.
- `bypass`: sublayers with nothing left (an attention without heads, a
  feed-forward block without units) written as the constant they output.

What a dead unit is lives in `keras_regkit.pruning.units`.
"""

from keras_regkit.compacting.result import CompactResult

__all__ = ["CompactResult"]
