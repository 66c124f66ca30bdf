"""The phantoms have one handedness, as patients do: what lies just off the standard view's plane
on +y (elevation) is a different structure from what lies on −y, in every seed. Without this no
single frame could tell which side of the plane the probe has drifted to (docs/sim.md)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.phantom import Phantom, make_phantom
from sim.tissues import LABEL


def _plane_labels(ph: Phantom, sweep_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels of the standard view's plane swept ``sweep_mm`` along the probe's y, with the probe-frame
    lateral (x) and depth (z) of each sample (z measured from the target's centre)."""
    centre_depth = float((ph.target.center - ph.target_pose.position_mm) @ ph.target_pose.axes[:, 2])
    x, z = np.meshgrid(np.arange(-80.0, 80.0, 1.0), np.arange(1.0, 2.0 * centre_depth + 60.0, 1.0))
    x, z = x.ravel(), z.ravel()
    pts = ph.target_pose.to_points(np.column_stack([x, np.full_like(x, sweep_mm), z]))
    return ph.labels(pts.astype(np.float32)), x, z - centre_depth


def _count(ph: Phantom, sweep_mm: float, label: str, region: str = "all") -> int:
    lab, x, z = _plane_labels(ph, sweep_mm)
    keep = lab == LABEL[label]
    if region == "shallow":
        keep &= (x > 0) & (z < 0)
    elif region == "deep":
        keep &= (x > 0) & (z > 0)
    return int(np.count_nonzero(keep))


# (preset, sweep mm, label, region, side where that structure shows): renal hilum medial (+y); thyroid
# medial and jugular vein lateral; coronary sinus / right-heart inflow (deep) on +y, right ventricular
# outflow (shallow) on −y.
SIDES = [
    ("abdomen", 8.0, "renal_sinus", "all", +1),
    ("vascular", 12.0, "thyroid", "all", +1),
    ("vascular", 12.0, "blood", "all", -1),
    ("cardiac", 12.0, "blood", "deep", +1),
    ("cardiac", 12.0, "blood", "shallow", -1),
]


@pytest.mark.parametrize(("preset", "sweep", "label", "region", "side"), SIDES)
def test_off_plane_anatomy_tells_the_side(
    preset: str, sweep: float, label: str, region: str, side: int
) -> None:
    for seed in range(6):
        ph = make_phantom(preset, seed)
        on_side = _count(ph, side * sweep, label, region)
        other = _count(ph, -side * sweep, label, region)
        assert on_side > other + 20, (preset, seed, label, region, on_side, other)
