"""Drawing varied views of a phantom: poses around the standard view and scanner settings."""

from __future__ import annotations

import numpy as np

from sim.novice import on_skin
from sim.phantom import Phantom
from sim.types import ImagingSettings, Pose


def random_settings(phantom: Phantom, rng: np.random.Generator) -> ImagingSettings:
    """Gain anywhere in the preset's range (on its step), a depth step and a frequency it offers."""
    p = phantom.preset
    lo, hi = p.gain_range_db
    gain = lo + p.gain_step_db * int(rng.integers(0, round((hi - lo) / p.gain_step_db) + 1))
    return ImagingSettings(
        gain_db=float(gain),
        depth_mm=float(rng.choice(p.depth_steps_mm)),
        freq_mhz=float(rng.choice(p.freqs_mhz)),
    )


def random_pose(
    phantom: Phantom, rng: np.random.Generator, spread: float = 1.0, lift_prob: float = 0.05
) -> Pose:
    """A pose on the skin around the standard view: slide/sweep ~N(0, 15 mm), tilts ~N(0, 10°),
    rotation ~N(0, 20°), all times ``spread``; now and then lifted off the skin."""
    t = np.array([rng.normal(0, 15), rng.normal(0, 15), 0.0]) * spread
    r = np.array([rng.normal(0, 10), rng.normal(0, 10), rng.normal(0, 20)]) * spread
    pose = on_skin(phantom, phantom.target_pose.apply_motion(t, r))
    if rng.uniform() < lift_prob:
        pose = on_skin(phantom, pose, -float(rng.uniform(4, 15)))
    return pose


def random_view(
    phantom: Phantom, rng: np.random.Generator, spread: float = 1.0
) -> tuple[Pose, ImagingSettings]:
    return random_pose(phantom, rng, spread), random_settings(phantom, rng)
