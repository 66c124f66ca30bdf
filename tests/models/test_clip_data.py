"""The clip model's training sequences and windows: real simulator frames, ground truth per frame."""

from __future__ import annotations

import numpy as np

from models.clip_data import FPS, SPEED_DEG_S, SPEED_MM_S, motion_plan, trajectory
from models.clip_head import MOTION_UNIT, relative_motion, sd_scale
from models.dataset import preset_of_seed
from sim.phantom import PRESS_MM, make_phantom
from sim.types import Pose


def test_a_trajectory_is_the_same_on_every_run_and_differs_by_index() -> None:
    a, b, c = (
        trajectory(3001, 0, size=64, frames=6),
        trajectory(3001, 0, size=64, frames=6),
        trajectory(3001, 1, size=64, frames=6),
    )
    assert np.array_equal(a.images, b.images) and np.array_equal(a.correction, b.correction)
    assert not np.allclose(a.position_mm, c.position_mm)


def test_a_trajectory_moves_at_a_novices_speed_and_keeps_the_face_on_the_skin() -> None:
    seq = trajectory(3002, 0, size=64, frames=20)
    ph = make_phantom(preset_of_seed(3002), 3002)
    steps = np.linalg.norm(np.diff(seq.position_mm[0], axis=0), axis=1) * FPS
    # Slide and sweep up to the top speed, plus tremor and the skin's slope under the face.
    assert steps.max() <= SPEED_MM_S[1] * 1.6 + 3.0
    for pos in seq.position_mm[0]:
        assert abs(pos[2] - (ph.surface_z(pos[0], pos[1]) + PRESS_MM)) < 1e-6  # pressed into the skin
    assert seq.contact[0].mean() > 0.5


def test_the_motion_plan_holds_and_moves_within_the_speed_limits() -> None:
    plan = motion_plan(np.random.default_rng(4), frames=4000)
    assert np.all(plan[:, 2] == 0.0)  # press is the skin's business
    speeds_mm = np.abs(plan[:, [0, 1]])
    speeds_deg = np.abs(plan[:, 3:])
    assert speeds_mm.max() <= SPEED_MM_S[1] and speeds_deg.max() <= SPEED_DEG_S[1]
    still = np.all(plan == 0.0, axis=1).mean()
    assert (
        0.15 < still < 0.4
    )  # holds happen (a quarter of the segments), but most of the time the probe moves


def test_relative_motion_is_the_earlier_pose_seen_from_the_current_probe_frame() -> None:
    now = Pose.from_rotation_vector([10.0, -5.0, 3.0], [5.0, -10.0, 30.0])
    earlier = now.apply_motion([4.0, -2.0, 0.5], [3.0, 0.0, -6.0])
    pos = np.array([earlier.position_mm, now.position_mm])
    rot = np.array([earlier.rotation_matrix(), now.rotation_matrix()])
    got = relative_motion(pos, rot, past=0, now=1)
    np.testing.assert_allclose(got, [4.0, -2.0, 0.5, 3.0, 0.0, -6.0], atol=1e-6)
    assert MOTION_UNIT > 0


def test_the_spread_scale_makes_the_one_sd_interval_hold_68_percent() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 3.0, (20000, 6))
    mean = np.zeros_like(truth)
    sd = np.full_like(truth, 1.0)  # three times too confident
    scale = sd_scale(mean, sd, truth)
    np.testing.assert_allclose(scale, 3.0, rtol=0.05)
    inside = np.abs(truth - mean) <= sd * scale
    np.testing.assert_allclose(inside.mean(axis=0), 0.6827, atol=0.01)
