"""The simulated novice: exact at noise 0, realistically imprecise above, and able to close the loop."""

from __future__ import annotations

import numpy as np
import pytest

from sim.novice import NoviceUser, UnguidedNovice, on_skin, random_start_pose
from sim.phantom import PRESS_MM, make_phantom
from sim.scanner import Scanner
from sim.truth import ground_truth, pose_error
from sim.types import Pose


def _run(user: NoviceUser, pose: Pose, motion, steps: int, dt: float = 0.1, phantom=None) -> Pose:  # type: ignore[no-untyped-def]
    for _ in range(steps):
        pose = user.follow(pose, motion, dt, phantom)
    return pose


def test_noise_zero_executes_requests_exactly_at_hand_speed() -> None:
    start = Pose.from_rotation_vector([5, -3, 2], [10, 0, 30])
    request = (np.array([10.0, -4.0, 0.0]), np.array([0.0, 5.0, -12.0]))
    user = NoviceUser(0.0, seed=1)
    one = user.follow(start, request, 0.1)
    moved = float(np.linalg.norm(start.motion_to(one)[0]))
    assert moved == pytest.approx(NoviceUser.SPEED_MM_S * 0.1, rel=1e-6)  # limited hand speed
    done = _run(user, one, request, 20)
    expected = start.apply_motion(*request)
    assert pose_error(done, expected)[0] < 1e-6 and pose_error(done, expected)[1] < 1e-4
    # Holding still keeps the probe exactly where it is.
    assert _run(NoviceUser(0.0, 1), done, None, 10) == done


def test_noise_makes_execution_imprecise_and_sometimes_wrong() -> None:
    request = (np.array([10.0, 0.0, 0.0]), np.zeros(3))
    errors, wrong = {}, {}
    for noise in (0.2, 1.0):
        finals = []
        for seed in range(60):
            user = NoviceUser(noise, seed)
            end = _run(user, Pose(np.zeros(3)), request, 25)  # one execution, before a re-read
            finals.append(Pose(np.zeros(3)).motion_to(end)[0][0])
        finals_arr = np.array(finals)
        errors[noise] = float(np.mean(np.abs(finals_arr - 10.0)))
        wrong[noise] = float(np.mean(finals_arr < 0))
    assert 0.2 < errors[0.2] < errors[1.0]
    assert wrong[1.0] > 0.03 and wrong[0.2] < wrong[1.0]
    assert np.mean(errors[1.0]) < 10.0  # still mostly the right way


def test_reaction_delay_scales_with_noise() -> None:
    request = (np.array([10.0, 0.0, 0.0]), np.zeros(3))
    first_move = []
    for seed in range(20):
        user = NoviceUser(1.0, seed)
        pose = Pose(np.zeros(3))
        for k in range(30):
            pose = user.follow(pose, request, 0.05)
            if abs(Pose(np.zeros(3)).motion_to(pose)[0][0]) > 1.0:
                first_move.append(k * 0.05)
                break
    assert np.mean(first_move) > 0.2


def test_novice_stays_on_the_skin_lifts_sometimes_and_is_deterministic() -> None:
    ph = make_phantom("abdomen", 2)
    sc = Scanner(ph, size=(64, 64))
    grid = sc.grid(ph.preset.default)

    def run(seed: int) -> tuple[list[Pose], NoviceUser]:
        user = NoviceUser(1.0, seed, ph)
        pose, poses = ph.target_pose, []
        for _ in range(600):
            pose = user.follow(pose, None, 0.1)
            poses.append(pose)
        return poses, user

    poses, user = run(3)
    assert poses == run(3)[0]
    contact = [bool(np.mean(sc.beam_contact(p, grid)) > 0.5) for p in poses]
    assert user.lifts >= 1 and not all(contact) and np.mean(contact) > 0.8
    depths = [p.position_mm[2] - float(ph.surface_z(p.position_mm[0], p.position_mm[1])) for p in poses]
    assert np.median(depths) == pytest.approx(PRESS_MM, abs=1.0)
    # It drifts while "holding still", but only slowly.
    d, _ = pose_error(poses[-1], ph.target_pose)
    assert 0.5 < d < 60


def test_start_pose_is_on_the_skin_and_in_range() -> None:
    ph = make_phantom("cardiac", 4)
    for seed in range(10):
        start = random_start_pose(ph, seed)
        dist, angle = pose_error(start, ph.target_pose)
        assert 30 <= dist <= 80 and 20 <= angle <= 60
        assert on_skin(ph, start) == start


def test_guided_novice_reaches_the_view_and_unguided_mostly_does_not() -> None:
    ph = make_phantom("abdomen", 5)
    settings = ph.preset.default
    start = random_start_pose(ph, 1)
    user = NoviceUser(0.3, 7, ph)
    pose = start
    for _ in range(120):
        gt = ground_truth(ph, pose, settings)
        # Ideal instructions: the true correction, one small step at a time.
        t = np.clip(gt.correction_mm, -10, 10)
        r = np.clip(gt.correction_deg, -10, 10)
        motion = None if gt.quality > 0.8 else (np.round(t), np.round(r))
        pose = user.follow(pose, motion, 0.2)
    guided = ground_truth(ph, pose, settings)
    assert guided.quality > 0.5

    searcher = UnguidedNovice(7)
    pose = start
    qualities = []
    for _ in range(120):
        pose = searcher.step(pose, 0.2, ph)
        qualities.append(ground_truth(ph, pose, settings).quality)
        assert np.linalg.norm(pose.position_mm[:2] - start.position_mm[:2]) < 120
    assert max(qualities) < guided.quality
    assert pose_error(pose, start)[0] > 5  # it does move around
