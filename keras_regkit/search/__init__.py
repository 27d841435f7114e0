"""Strength search: one trial per decade, then a fine grid inside the best
decade, on KerasTuner (its tuner, oracle, trial storage, resume and
distributed mode; nothing of our own).

- `strength`: `search_strength`, its arguments checked before any trial;
- `stages`: the two stages as KerasTuner grid searches, the strengths they
  try (`decades`, `fine_grid`) and the rows they record;
- `trial`: one trial (build, attach the penalty, fit, measure);
- `result`: `StrengthSearchResult`, its table and its plot.
"""

from keras_regkit.search.result import StrengthSearchResult
from keras_regkit.search.stages import decades, fine_grid
from keras_regkit.search.strength import search_strength

__all__ = ["StrengthSearchResult", "decades", "fine_grid", "search_strength"]
