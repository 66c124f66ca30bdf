"""The target belief's pure functions (service.policy.belief, service.policy.camera_guidance):
convergence on exact and on sign-flipped observations, pose-jump resets, and the geometry they use."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.policy.belief import (
    AXES,
    AxisNoise,
    BeliefCalibration,
    BeliefParams,
    Observation,
    Prior,
    ScoreField,
    TargetBelief,
    corrections_to,
    matrices_to_rotvecs,
    pose_jump,
    rotvecs_to_matrices,
)
from service.policy.camera_guidance import BeliefGuide, FrameOutput, PendingFrames, newest_pose
from sim.types import Pose

ROOT = Path(__file__).resolve().parents[2]
OUT_OF_PLANE = ("dy", "rx", "rz")  # sweep, tilt, rotate: the signs one frame gets wrong


def calibration(flip: dict[str, float] | None = None, sigma: float = 1.0) -> BeliefCalibration:
    """A calibration whose correction model is exact but for ``sigma`` (gain 1) and ``flip`` rates."""
    flip = flip or {}
    axes = tuple(AxisNoise(1.0, sigma, flip.get(a, 0.0)) for a in AXES)
    prior = Prior(np.zeros(3), np.eye(3), np.diag([15.0**2] * 3 + [12.0**2] * 3))
    field = ScoreField(0.6, np.array([12.0, 8.0, 10.0, 10.0, 10.0, 15.0]), 0.08)
    return BeliefCalibration({"test": prior}, ((0.0, axes),), {"test": field}, {"test": field})


def true_observation(probe: Pose, target: Pose, cal: BeliefCalibration, rng: np.random.Generator,
                     flip: dict[str, float]) -> Observation:  # fmt: skip
    t, r = probe.motion_to(target)
    c = np.concatenate([t, r])
    for i, a in enumerate(AXES):
        if rng.uniform() < flip.get(a, 0.0):
            c[i] = -c[i]
    q = cal.quality["test"].predict(np.concatenate([t, r])[None])[0]
    return Observation(c, 1.0, float(q), True)


def run_belief(target: Pose, flip: dict[str, float], seed: int, frames: int = 60) -> np.ndarray:
    cal = calibration(flip)
    belief = TargetBelief(cal, BeliefParams(particles=800), seed=seed)
    belief.reset("test")
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        probe = target.apply_motion(rng.uniform(-25, 25, 3) * [1, 1, 0.2], rng.uniform(-15, 15, 3))
        obs = true_observation(probe, target, cal, rng, flip)
        belief.update(obs, probe.position_mm, probe.rotation_matrix())
    probe = target.apply_motion([10.0, -10.0, 0.0], [0.0, 0.0, 10.0])
    est = belief.estimate(probe.position_mm, probe.rotation_matrix())
    got = Pose.from_matrix(est.position_mm, est.rotation)
    return np.concatenate(got.motion_to(target))


targets = st.builds(
    lambda p, r: Pose.from_rotation_vector(p, r),
    st.tuples(*(st.floats(-20, 20),) * 2, st.floats(-2, 2)),
    st.tuples(*(st.floats(-12, 12),) * 3),
)


@settings(max_examples=8, deadline=None)
@given(target=targets, seed=st.integers(0, 2**16))
# Found by hypothesis: the cloud collapsed onto a hypothesis 21 mm off on the sweep and stayed there
# until the belief redrew particles where an unexplained observation puts the target.
@example(
    target=Pose(np.array([-7.93359375, 0.0, 0.1875]), np.array([0.99925521, -0.02617344, 0.0, -0.02835456])),
    seed=1521,
)
def test_exact_observations_converge_to_the_truth(target: Pose, seed: int) -> None:
    err = run_belief(target, {}, seed)
    assert np.all(np.abs(err[:3]) < 2.5), err
    assert np.all(np.abs(err[3:]) < 2.5), err


@settings(max_examples=8, deadline=None)
@given(target=targets, seed=st.integers(0, 2**16))
def test_sign_flipped_out_of_plane_observations_still_converge(target: Pose, seed: int) -> None:
    """Sweep, tilt and rotate flipped at the shipped model's measured rates (and no better)."""
    manifest = json.loads((ROOT / "models/sonoguide-view/1.4.0/manifest.json").read_text())
    bands = manifest["guidance"]["observation"]["visible_bands"]
    measured = {a: max(b["axes"][a]["flip"] for b in bands) for a in OUT_OF_PLANE}
    flip = {a: max(v, 0.25) for a, v in measured.items()}
    err = run_belief(target, flip, seed, frames=90)
    assert np.all(np.abs(err[:3]) < 4.0), err
    assert np.all(np.abs(err[3:]) < 4.0), err


def test_without_evidence_the_belief_is_its_prior() -> None:
    belief = TargetBelief(calibration(), BeliefParams(particles=2000), seed=1)
    belief.reset("test")
    est = belief.estimate(np.zeros(3), np.eye(3))
    assert np.linalg.norm(est.position_mm) < 12.0  # the densest point of a wide cloud (prior σ 19.5 mm)
    assert np.all(est.spread[:3] > 8.0)  # wide: nothing has been seen


def test_a_probe_that_stands_still_adds_almost_no_evidence() -> None:
    belief = TargetBelief(calibration(), seed=2)
    first = belief.update(Observation(np.zeros(6), 0.0, 0.0), np.zeros(3), np.eye(3))
    again = belief.update(Observation(np.zeros(6), 0.0, 0.0), np.zeros(3), np.eye(3))
    moved = belief.update(Observation(np.zeros(6), 0.0, 0.0), np.array([20.0, 0, 0]), np.eye(3))
    assert first == 1.0 and again < 0.05 and moved == 1.0


def test_a_pose_jump_restarts_the_belief_with_the_reason() -> None:
    guide = BeliefGuide(calibration(), seed=3)
    guide.reset("test")
    c = np.zeros(6)
    for k in range(20):
        step = guide.step(k * 0.1, np.array([k * 1.0, 0.0, 0.0]), np.eye(3), c, 0.9, 0.5, 1.0, 0.0, 80.0)
        assert step.reset_reason is None
    assert guide.belief.observations == 20
    step = guide.step(2.0, np.array([80.0, 0.0, 0.0]), np.eye(3), c, 0.9, 0.5, 1.0, 0.0, 80.0)
    assert step.reset_reason is not None and "jumped" in step.reset_reason
    assert guide.belief.observations == 1  # only the frame after the jump
    assert guide.resets == 2


def test_losing_the_camera_long_enough_restarts_the_belief() -> None:
    guide = BeliefGuide(calibration(), seed=4)
    c = np.zeros(6)
    guide.step(0.0, np.zeros(3), np.eye(3), c, 0.9, 0.5, 1.0, 0.0, 80.0)
    assert guide.step(2.0, None, None, c, 0.9, 0.5, 1.0, 0.0, 80.0).reset_reason is None
    step = guide.step(6.0, None, None, c, 0.9, 0.5, 1.0, 0.0, 80.0)
    assert step.estimate is None and step.reset_reason is not None and "lost" in step.reset_reason


def test_pose_jump_ignores_a_hand_speed_motion() -> None:
    prev = (0.0, np.zeros(3), np.eye(3))
    assert pose_jump(prev, 0.1, np.array([10.0, 0, 0]), np.eye(3)) is None  # 100 mm/s
    assert pose_jump(prev, 0.1, np.array([40.0, 0, 0]), np.eye(3)) is not None  # 400 mm/s
    turned = rotvecs_to_matrices(np.array([[0.0, 0.0, 40.0]]))[0]
    assert pose_jump(prev, 0.1, np.zeros(3), turned) is not None


@settings(max_examples=30, deadline=None)
@given(rv=st.tuples(*(st.floats(-170, 170),) * 3))
def test_rotation_vectors_round_trip(rv: tuple[float, float, float]) -> None:
    v = np.array([rv])
    if np.linalg.norm(v) > 175:
        v = v / np.linalg.norm(v) * 175
    np.testing.assert_allclose(matrices_to_rotvecs(rotvecs_to_matrices(v)), v, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(a=targets, b=targets)
def test_corrections_match_the_simulators_motion_to(a: Pose, b: Pose) -> None:
    got = corrections_to(a.position_mm, a.rotation_matrix(), b.position_mm[None], b.rotation_matrix()[None])[
        0
    ]
    t, r = a.motion_to(b)
    np.testing.assert_allclose(got, np.concatenate([t, r]), atol=1e-6)


class LaggingTracker:
    """Poses known up to ``known_until`` (the camera's latency), at 0.05 s samples, with a hole."""

    def __init__(self, hole: tuple[float, float] = (1.0, 1.4)) -> None:
        self.known_until = 0.0
        self.hole = hole

    def pose_at(self, t: float) -> SimpleNamespace | None:
        if t > self.known_until + 1e-9 or self.hole[0] <= t < self.hole[1]:
            return None
        return SimpleNamespace(position_mm=np.array([t * 10.0, 0.0, 0.0]), patient_from_probe=np.eye(3))


def test_frames_wait_for_the_camera_pose_of_their_time_and_are_folded_in_order() -> None:
    guide = BeliefGuide(calibration(), seed=5)
    guide.reset("test")
    tracker, pending = LaggingTracker(), PendingFrames(wait_s=0.5)
    out = FrameOutput(np.zeros(6), 0.9, 0.5, 1.0, 0.0, 80.0)
    folded_at: list[float] = []
    observe = guide.observe
    guide.observe = lambda t, *a: folded_at.append(t) or observe(t, *a)  # type: ignore[method-assign]
    for k in range(40):  # frames every 0.05 s; the camera's poses arrive 0.2 s late
        t = k * 0.05
        tracker.known_until = t - 0.2
        pending.add(t, out)
        assert pending.fold(guide, tracker.pose_at, t) is None
    # Every frame outside the hole was folded once, in time order, at its own pose; the frames in
    # the hole never got one and were let go; the last 0.2 s still wait for theirs.
    expected = [
        round(k * 0.05, 3) for k in range(40) if not 1.0 <= k * 0.05 < 1.4 and k * 0.05 <= 1.75 + 1e-9
    ]
    assert [round(t, 3) for t in folded_at] == expected
    assert len(pending) == 4 and guide.belief.observations == len(expected)
    # A pose that never comes: after wait_s the frame is dropped, not kept for ever.
    tracker.known_until = -1.0
    pending.fold(guide, tracker.pose_at, 3.0)
    assert len(pending) == 0


def test_the_motion_is_named_from_the_newest_pose_within_the_lag() -> None:
    tracker = LaggingTracker(hole=(9.0, 9.0))
    tracker.known_until = 2.0
    assert newest_pose(tracker.pose_at, 2.0).position_mm[0] == 20.0
    assert newest_pose(tracker.pose_at, 2.25).position_mm[0] == pytest.approx(19.5)  # 0.3 s back
    assert newest_pose(tracker.pose_at, 2.35) is None  # older than the last lag: not tracked now
