"""The placeholder model on the simulator's images: contact must not depend on the sector's shape."""

from __future__ import annotations

import numpy as np
import pytest

from service.daemon.inference import HeuristicModel
from sim.novice import on_skin
from sim.phantom import make_phantom
from sim.scanner import Scanner
from sim.truth import ground_truth
from sim.types import ImagingSettings


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(make_phantom("abdomen", 7), size=(128, 128))


@pytest.mark.parametrize("depth_mm", [60.0, 120.0, 200.0])
def test_contact_on_the_skin_at_any_depth_and_none_in_air(scanner: Scanner, depth_mm: float) -> None:
    model, ph = HeuristicModel(), scanner.phantom
    best = ground_truth(ph, ph.target_pose, ImagingSettings(25.0, depth_mm, 3.5)).best_gain_db
    settings = ImagingSettings(best, depth_mm, 3.5)
    on = model.predict(scanner.render(ph.target_pose, settings, 1), best, depth_mm, 3.5)
    assert on.contact > 0.8  # the deeper the view, the larger the black corners of the sector
    assert 0.3 < on.quality <= 0.5  # it cannot see the target: never a "good view" on its own
    lifted = on_skin(ph, ph.target_pose, -10.0)
    off = model.predict(scanner.render(lifted, settings, 1), best, depth_mm, 3.5)
    assert off.contact == 0.0 and off.quality == 0.0


def test_noise_only_is_no_contact() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(1, 10, (64, 64)).astype(np.uint8)  # receiver noise below the floor, no echo
    assert HeuristicModel().predict(noise, 30.0, 100.0, 3.5).contact == 0.0
