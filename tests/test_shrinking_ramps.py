"""The shrink's sparsity schedules (`shrinking/ramps.py`)."""

import numpy as np
import pytest

from keras_regkit.shrinking import CubicRamp


def test_cubic_ramp_starts_at_the_first_cut_rises_ever_slower_and_holds_the_target():
    ramp = CubicRamp(0.98, initial=0.8, ramp_fraction=0.8)
    progress = np.linspace(0, 1, 101)
    values = np.array([ramp(p) for p in progress])
    assert values[0] == pytest.approx(0.8)
    assert (np.diff(values) >= -1e-12).all()
    steps = np.diff(values[:81])
    assert (np.diff(steps) <= 1e-12).all()  # concave: big cuts first
    assert values[80:] == pytest.approx([0.98] * 21)
    # Zhu & Gupta's equation at a point.
    assert ramp(0.4) == pytest.approx(0.98 + (0.8 - 0.98) * (1 - 0.4 / 0.8) ** 3)
    # A first cut above the target is the target: one cut, then hold.
    assert CubicRamp(0.5, initial=0.8)(0.0) == 0.5


def test_cubic_ramp_round_trips_and_validates():
    ramp = CubicRamp(0.9, initial=0.3, ramp_fraction=0.5)
    assert CubicRamp.from_config(ramp.get_config()).get_config() == ramp.get_config()
    with pytest.raises(ValueError, match=r"argument `target`.*target=1.2"):
        CubicRamp(1.2)
    with pytest.raises(ValueError, match="argument `ramp_fraction`"):
        CubicRamp(0.9, ramp_fraction=0.0)
