"""The service's frame history for a clip head: which earlier frames, which motion, what when missing."""

from __future__ import annotations

import numpy as np
import pytest

from service.policy.belief import AxisNoise, BeliefCalibration, Observation, observation_noise
from service.policy.clip_window import ClipContract, FrameHistory, KeptFrame, relative_motion
from sim.types import Pose

CONTRACT = ClipContract(past_s=(0.3, 0.6, 1.0), match_s=0.05, motion_scale=0.1)


def kept(t: float, value: float, pose: Pose | None = None) -> KeptFrame:
    if pose is None:
        return KeptFrame(t, np.full(4, value, np.float32), None, None)
    return KeptFrame(t, np.full(4, value, np.float32), pose.position_mm, pose.rotation_matrix())


def test_the_earlier_frames_are_the_nearest_within_the_match_and_their_motion_is_in_the_current_probe_frame() -> (
    None
):
    h = FrameHistory(CONTRACT)
    now_pose = Pose.from_rotation_vector([10.0, 0.0, 2.0], [0.0, 0.0, 20.0])
    for i in range(12):  # 10 fps: frames at 0.0 ... 1.1 s, value = index
        h.add(kept(i / 10, float(i), now_pose.apply_motion([0.0, (11 - i) * 1.0, 0.0], [0.0, 0.0, 0.0])))
    current = kept(1.1, 11.0, now_pose)
    feats, motion = h.inputs(current)
    assert feats.shape == (1, 4, 4) and motion.shape == (1, 3, 7)
    np.testing.assert_allclose(feats[0, :, 0], [11, 8, 5, 1])  # 0.3, 0.6 and 1.0 s before
    # Each earlier frame lay (11 - i) mm along the probe's own y: motion in units of 10 mm, flag 1.
    np.testing.assert_allclose(motion[0, :, 1], [0.3, 0.6, 1.0], atol=1e-6)
    np.testing.assert_allclose(motion[0, :, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(motion[0, :, 6], 1.0)


def test_a_missing_earlier_frame_is_the_current_one_repeated_with_the_motion_unknown() -> None:
    h = FrameHistory(CONTRACT)
    pose = Pose.from_rotation_vector([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    h.add(kept(0.5, 5.0, pose))  # only 0.6 s before 1.1 is kept
    current = kept(1.1, 11.0, pose)
    h.add(current)
    feats, motion = h.inputs(current)
    np.testing.assert_allclose(feats[0, :, 0], [11, 11, 5, 11])
    np.testing.assert_allclose(motion[0, :, 6], [0, 1, 0])
    assert np.all(motion[0, [0, 2]] == 0.0)


def test_without_the_camera_the_frames_are_read_and_the_motion_is_unknown() -> None:
    h = FrameHistory(CONTRACT)
    for i in range(12):
        h.add(kept(i / 10, float(i)))
    feats, motion = h.inputs(kept(1.1, 11.0))
    np.testing.assert_allclose(feats[0, :, 0], [11, 8, 5, 1])
    assert np.all(motion == 0.0)
    assert (
        relative_motion(kept(0.0, 0.0), kept(1.0, 1.0, Pose.from_rotation_vector([0, 0, 0], [0, 0, 0])))
        is None
    )


def test_old_frames_are_dropped_and_time_going_back_starts_afresh() -> None:
    h = FrameHistory(CONTRACT)
    for i in range(30):
        h.add(kept(i / 10, float(i)))
    assert len(h) == 11  # 1.0 s + the match back from 2.9 s: 1.9 ... 2.9
    h.add(kept(0.0, 0.0))  # a new stream's clock
    assert len(h) == 1


@pytest.mark.parametrize(
    ("clip", "words"),
    [
        ({"match_s": 0.05, "motion": {"scale": 0.1}}, "incomplete"),
        ({"past_s": [0.3], "match_s": 0.05, "motion": {}}, "incomplete"),
        ({"past_s": [0.3, -1], "match_s": 0.05, "motion": {"scale": 0.1}}, "non-positive"),
        ({"past_s": "0.3", "match_s": "x", "motion": {"scale": 0.1}}, "malformed"),
    ],
)
def test_a_broken_clip_contract_is_refused_in_words(clip: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ClipContract.from_manifest(clip)


def test_an_observation_with_its_own_spread_is_read_as_the_truth_plus_that_noise() -> None:
    band = tuple(AxisNoise(0.1, 3.0, 0.2) for _ in range(6))
    cal = BeliefCalibration({}, ((0.0, band),), {}, {})
    plain = Observation(np.zeros(6), 0.9, 0.5)
    assert observation_noise(plain, cal) == band
    own = Observation(np.zeros(6), 0.9, 0.5, sd=np.array([2.0, 9.0, 0.1, 1.0, 1.0, 1.0]))
    noise = observation_noise(own, cal)
    assert [n.gain for n in noise] == [1.0] * 6 and [n.flip for n in noise] == [0.0] * 6
    assert [n.sigma for n in noise] == [2.0, 9.0, 0.5, 1.0, 1.0, 1.0]  # never closer than 0.5
