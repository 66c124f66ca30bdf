"""The depth-rule measurement (service.tools.evaluate.depth_rule): a best depth that is exactly the
simulator's best depth frames the target under any boundary, and one step too shallow never does,
whichever boundary turns it into a step."""

from __future__ import annotations

import numpy as np

from service.tools.evaluate.depth_rule import framed_share
from sim.phantom import make_phantom
from sim.truth import ground_truth


def test_the_true_best_depth_is_framed_and_one_step_shallower_is_not() -> None:
    phantoms = [make_phantom(name, 100003 + k) for k, name in enumerate(("abdomen", "vascular", "cardiac"))]
    best = [ground_truth(ph, ph.target_pose, ph.preset.default).best_depth_mm for ph in phantoms]
    shares = framed_share(phantoms, np.array(best), boundaries=(0.5, 0.0))
    every = dict.fromkeys(("abdomen", "vascular", "cardiac"), 1.0)
    assert shares == {"0.50": every, "0.00": every}
    shallower = []
    for ph, b in zip(phantoms, best, strict=True):
        steps = ph.preset.depth_steps_mm
        k = steps.index(b)
        shallower.append(steps[k - 1] if k > 0 else steps[0] - 1.0)
    shares = framed_share(phantoms, np.array(shallower), boundaries=(0.5, 0.0))
    for preset_shares in shares.values():
        for ph, b in zip(phantoms, best, strict=True):
            if ph.preset.depth_steps_mm.index(b) > 0:  # the shallowest step has nothing below it
                assert preset_shares[ph.preset.name] == 0.0, (ph.preset.name, b)
