"""Seeded samplers of probe poses and imaging settings around a phantom's standard view.

Used to build model datasets (``models.dataset``) and start poses. Kinds of pose:

- ``near``: a small probe-frame motion away from the standard view, face re-seated on the skin;
- ``far``: a large slide/tilt/rotation, the target often out of the plane;
- ``light``: near or far, pressed lightly or lifted a little (partial contact);
- ``air``: lifted well clear of the skin (no contact at all).
"""

from __future__ import annotations

import numpy as np

from sim.phantom import Phantom
from sim.presets import ExamPreset
from sim.types import ImagingSettings, Pose

POSE_KINDS = ("near", "far", "light", "air")


def seat_on_skin(phantom: Phantom, pose: Pose, press_mm: float) -> Pose:
    """The same orientation with the face centre moved along the skin normal to ``press_mm`` below the
    skin under it (negative: lifted above the skin)."""
    p = pose.position_mm
    z = float(phantom.surface_z(float(p[0]), float(p[1])))
    n = phantom.surface_normal(float(p[0]), float(p[1]))
    return Pose(np.array([p[0], p[1], z]) + press_mm * n, pose.quat_wxyz)


def sample_pose(phantom: Phantom, rng: np.random.Generator, kind: str) -> Pose:
    """A pose of the given kind (one of ``POSE_KINDS``) around ``phantom.target_pose``."""
    if kind not in POSE_KINDS:
        raise ValueError(f"unknown pose kind {kind!r}; choose one of {POSE_KINDS}")
    base = kind if kind in ("near", "far") else str(rng.choice(["near", "far"], p=[0.6, 0.4]))
    if base == "near":
        t = rng.normal(0.0, [8.0, 4.0, 0.0])
        r = rng.normal(0.0, [5.0, 6.0, 10.0])
    else:
        t = np.array([rng.uniform(-45, 45), rng.uniform(-30, 30), 0.0])
        r = np.array([rng.uniform(-25, 25), rng.uniform(-25, 25), rng.uniform(-60, 60)])
    moved = phantom.target_pose.apply_motion(t, r)
    if kind == "air":
        press = -float(rng.uniform(6.0, 40.0))
    elif kind == "light":
        press = float(rng.uniform(-4.0, 1.0))
    else:
        press = float(rng.uniform(1.0, 4.0))
    return seat_on_skin(phantom, moved, press)


def sample_settings(
    preset: ExamPreset, rng: np.random.Generator, depth_hint_mm: float | None = None
) -> ImagingSettings:
    """Depth (a preset step: half the time within one step of ``depth_hint_mm``), frequency, TGC.

    The gain is left at the preset default: choose it from the ground truth's best gain afterwards
    (the best gain does not depend on the current gain).
    """
    steps = sorted(preset.depth_steps_mm)
    if depth_hint_mm is not None and rng.uniform() < 0.5:
        i = steps.index(preset.nearest_depth(depth_hint_mm))
        i = int(np.clip(i + rng.integers(-1, 2), 0, len(steps) - 1))
        depth = steps[i]
    else:
        depth = steps[int(rng.integers(len(steps)))]
    freq = float(preset.freqs_mhz[int(rng.integers(len(preset.freqs_mhz)))])
    tgc = tuple(float(v) for v in rng.normal(0.0, 2.5, 3)) if rng.uniform() < 0.3 else (0.0, 0.0, 0.0)
    return ImagingSettings(gain_db=preset.default.gain_db, depth_mm=float(depth), freq_mhz=freq, tgc_db=tgc)  # type: ignore[arg-type]


def sample_gain_offset(rng: np.random.Generator) -> float:
    """Current gain minus best gain: mostly near the best, often far from it (both directions)."""
    if rng.uniform() < 0.5:
        return float(rng.normal(0.0, 4.0))
    return float(rng.uniform(-20.0, 20.0))
