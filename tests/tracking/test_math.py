"""The pure math of tracking: deprojection against librealsense's own, Kabsch, interpolation in host
time, timestamp mapping, calibration file I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import pytest

from firmware_bridge.kit import PROBE_MARKERS, Intrinsics, matrix_to_quat
from service.tracking import calibration as cal
from service.tracking.markers import deproject
from service.tracking.pose import angle_deg, fit_probe, kabsch, pose_of, transform
from service.tracking.track import PoseSample, PoseTrack, TimestampMapper, interpolate
from sim.types import Pose, rotvec_to_matrix


@pytest.mark.parametrize(
    ("model", "coeffs"),
    [
        ("brown_conrady", (0.08, -0.15, 0.002, -0.001, 0.05)),
        ("inverse_brown_conrady", (-0.05, 0.06, 0.001, 0.0015, -0.02)),
        ("none", (0.0, 0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_deproject_matches_librealsense(model: str, coeffs: tuple[float, ...]) -> None:
    ri = rs.intrinsics()
    ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = 640, 480, 612.0, 609.5, 321.3, 238.7
    ri.model = getattr(rs.distortion, model)
    ri.coeffs = list(coeffs)
    ours = Intrinsics.from_rs(ri)
    assert ours.model == model and ours.coeffs == pytest.approx(coeffs)
    rng = np.random.default_rng(0)
    uv = rng.uniform([0, 0], [640, 480], size=(50, 2))
    z = rng.uniform(300, 900, size=50)
    want = np.array(
        [
            rs.rs2_deproject_pixel_to_point(ri, [float(u), float(v)], float(d))
            for (u, v), d in zip(uv, z, strict=True)
        ]
    )
    assert np.allclose(deproject(ours, uv, z), want, atol=1e-3 * z[:, None])  # librealsense uses float32


def test_unsupported_distortion_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="kannala_brandt4"):
        Intrinsics(640, 480, 600, 600, 320, 240, "kannala_brandt4")


def test_kabsch_recovers_a_rigid_motion_and_the_fit_rejects_a_wrong_marker() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 3)) * 50
    r = rotvec_to_matrix([20.0, -35.0, 110.0])
    t = np.array([10.0, -20.0, 600.0])
    r_fit, t_fit, rms = kabsch(src, src @ r.T + t)
    assert np.allclose(r_fit, r, atol=1e-9) and np.allclose(t_fit, t, atol=1e-9) and rms < 1e-9

    T_cam_probe = transform(r, t)
    centres = {n: T_cam_probe[:3, :3] @ np.array(p) + t for n, p in PROBE_MARKERS.items()}
    fit = fit_probe(centres)
    assert fit is not None and np.allclose(fit.T_cam_probe, T_cam_probe, atol=1e-9)
    assert fit_probe({n: c for n, c in centres.items() if n != "blue"}) is None  # two points: no pose
    moved = dict(centres, blue=centres["blue"] + np.array([0.0, 12.0, 0.0]))  # a wrong blob
    assert fit_probe(moved) is None


def _sample(t: float, x: float, angle: float) -> PoseSample:
    return PoseSample(t, np.array([x, 0.0, 0.0]), matrix_to_quat(rotvec_to_matrix([0.0, 0.0, angle])))


def test_interpolation_slerps_between_poses_and_refuses_to_extrapolate_far() -> None:
    # The probe slides 30 mm/s along x and turns 60°/s about z; camera at 30 fps.
    samples = [_sample(10.0 + i / 30, 30.0 * i / 30, 60.0 * i / 30) for i in range(10)]
    for t in (10.05, 10.1234, 10.29):
        p = interpolate(samples, t)
        assert p is not None and p.age_s == 0.0
        assert p.position_mm[0] == pytest.approx(30.0 * (t - 10.0), abs=1e-9)
        want = matrix_to_quat(rotvec_to_matrix([0.0, 0.0, 60.0 * (t - 10.0)]))
        assert angle_deg(p.quat_wxyz, want) < 1e-4
        assert np.allclose(p.patient_from_probe, rotvec_to_matrix([0.0, 0.0, 60.0 * (t - 10.0)]), atol=1e-9)
    last = samples[-1].host_time
    ahead = interpolate(samples, last + 0.08)  # constant velocity up to 100 ms ahead
    assert ahead is not None and ahead.age_s == pytest.approx(0.08)
    assert ahead.position_mm[0] == pytest.approx(30.0 * (last + 0.08 - 10.0), abs=1e-6)
    assert interpolate(samples, last + 0.15) is None  # stale: no pose rather than a guess
    assert interpolate(samples, 10.0 - 0.15) is None
    # An occlusion left a 0.5 s hole: no interpolation across it, only near either side.
    holed = [*samples[:3], *[_sample(s.host_time + 0.5, s.position_mm[0], 0.0) for s in samples[3:]]]
    assert interpolate(holed, samples[2].host_time + 0.25) is None
    near = interpolate(holed, samples[2].host_time + 0.05)
    assert near is not None and near.position_mm[0] == pytest.approx(samples[2].position_mm[0])
    assert interpolate([], 1.0) is None


def test_pose_track_is_bounded_and_restarts_when_time_goes_back() -> None:
    track = PoseTrack(capacity=5)
    for i in range(8):
        track.add(_sample(i * 0.1, float(i), 0.0))
    assert track.at(0.1) is None and track.at(0.3) is not None  # only the last five kept
    track.add(_sample(0.0, 99.0, 0.0))  # playback restarted
    latest = track.latest()
    assert latest is not None and latest.position_mm[0] == 99.0 and track.at(0.3) is None


def test_recording_timestamps_map_onto_the_host_clock() -> None:
    m = TimestampMapper(max_lag_s=0.25)
    # Frames arrive on time, a little late (jitter): recorded spacing is kept.
    hosts = [m.recording(i * 100 / 3, 50.0 + i / 30 + 0.004 * (i % 2)) for i in range(5)]
    assert np.allclose(np.diff(hosts), 1 / 30) and hosts[0] == 50.0
    # The recording loops back to 0 ms: time continues one frame later.
    assert m.recording(0.0, 50.0 + 5 / 30) == pytest.approx(hosts[-1] + 1 / 30)
    # Playback burst (frames arrive early): never stamped later than arrival.
    assert m.recording(1000 / 30, 50.17) <= 50.17
    # A long stall: re-anchored at arrival instead of stamping far in the past.
    assert m.recording(2000 / 30, 60.0) == 60.0
    assert TimestampMapper.system_stamped(1_000_000.0, 7.0, 1000.02) == pytest.approx(6.98)


def test_calibration_file_round_trip_atomic_and_clear_errors(tmp_path: Path) -> None:
    pose = Pose.from_rotation_vector([40.0, 50.0, -600.0], [175.0, 3.0, 2.0])
    c = cal.Calibration(
        transform(pose.rotation_matrix(), pose.position_mm), 0.42, 10, "2026-01-01T00:00:00Z", "SIM1"
    )
    path = cal.save(c, tmp_path / "sub" / "calibration.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["calibration.json"]  # no temp file left
    back = cal.load(path)
    assert np.allclose(back.T_patient_cam, c.T_patient_cam, atol=1e-5) and back.residual_mm == 0.42
    position, quat = pose_of(back.T_patient_cam)
    assert np.allclose(position, pose.position_mm, atol=1e-3) and angle_deg(quat, pose.quat_wxyz) < 1e-4

    with pytest.raises(cal.CalibrationError, match=r"missing\.json: no camera calibration yet"):
        cal.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(cal.CalibrationError, match=r"bad\.json: unreadable"):
        cal.load(bad)
    doc = json.loads(path.read_text())
    del doc["camera_to_patient"]["quat_wxyz"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(cal.CalibrationError, match=r"malformed.*quat_wxyz"):
        cal.load(bad)
