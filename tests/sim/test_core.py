"""The simulator's contracts: poses, presets, phantoms, rendering and ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from sim.phantom import make_phantom
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.truth import ground_truth, pose_error, view_score
from sim.types import ImagingSettings, Pose, matrix_to_rotvec, rotvec_to_matrix


def test_pose_motion_round_trip_and_conventions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = Pose.from_rotation_vector(rng.uniform(-50, 50, 3), rng.uniform(-90, 90, 3))
        b = Pose.from_rotation_vector(rng.uniform(-50, 50, 3), rng.uniform(-90, 90, 3))
        t, r = a.motion_to(b)
        reached = a.apply_motion(t, r)
        assert np.allclose(reached.position_mm, b.position_mm, atol=1e-9)
        assert pose_error(reached, b)[1] < 1e-4
        assert np.allclose(rotvec_to_matrix(matrix_to_rotvec(a.rotation_matrix())), a.rotation_matrix())
    # A slide (+x in the probe frame) moves the face along the probe's lateral axis in patient space.
    p = Pose.from_rotation_vector([0, 0, 0], [0, 0, 90])
    moved = p.apply_motion([10, 0, 0], [0, 0, 0])
    assert np.allclose(moved.position_mm, [0, 10, 0])
    assert np.allclose(p.inverse().compose(p).position_mm, 0)
    with pytest.raises(ValueError, match="invalid pose"):
        Pose(np.array([np.nan, 0, 0]))


def test_presets_cover_the_three_exams() -> None:
    kinds = {name: p.probe.kind for name, p in PRESETS.items()}
    assert kinds == {"abdomen": "curved", "vascular": "linear", "cardiac": "phased"}
    for p in PRESETS.values():
        assert p.default.depth_mm in p.depth_steps_mm
        assert p.default.freq_mhz in p.freqs_mhz
        assert p.gain_range_db[0] <= p.default.gain_db <= p.gain_range_db[1]
    assert 80 <= PRESETS["abdomen"].default.depth_mm <= 160
    assert 20 <= PRESETS["vascular"].default.depth_mm <= 50
    assert 120 <= PRESETS["cardiac"].default.depth_mm <= 180


def test_phantoms_are_seeded_and_vary() -> None:
    a, b, c = make_phantom("abdomen", 1), make_phantom("abdomen", 1), make_phantom("abdomen", 2)
    assert a.target_pose == b.target_pose
    assert np.array_equal(a.target.center, b.target.center)
    assert not np.allclose(a.target.center, c.target.center)
    assert not np.allclose(a.target.semi_mm, c.target.semi_mm)
    with pytest.raises(ValueError, match="unknown exam preset"):
        make_phantom("knee", 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_render_is_deterministic_and_frames_differ_only_by_noise(preset: str) -> None:
    ph = make_phantom(preset, 3)
    settings = PRESETS[preset].default
    img = Scanner(ph).render(ph.target_pose, settings, 5)
    again = Scanner(make_phantom(preset, 3)).render(ph.target_pose, settings, 5)
    assert img.shape == (256, 256) and img.dtype == np.uint8
    assert np.array_equal(img, again)
    other = Scanner(ph).render(ph.target_pose, settings, 6)
    # Electronic noise changes per frame; the speckle (fixed scatterers) does not.
    assert not np.array_equal(img, other)
    inner = (img > 30) & (other > 30)
    assert np.corrcoef(img[inner].astype(float), other[inner].astype(float))[0, 1] > 0.9
    assert 20 < img.mean() < 150


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lifted_or_tilted_off_probe_gives_ring_down_and_noise_only(preset: str) -> None:
    ph = make_phantom(preset, 4)
    sc = Scanner(ph)
    settings = PRESETS[preset].default
    on_skin = sc.render_stages(ph.target_pose, settings)
    lifted = sc.render_stages(ph.target_pose.apply_motion([0, 0, -15], [0, 0, 0]), settings)
    tilted = sc.render_stages(ph.target_pose.apply_motion([0, 0, 0], [85, 0, 0]), settings)
    assert on_skin.contact.all()
    for st in (lifted, tilted):
        assert not st.contact.any()
        # The lens rings down near the face (bright bands parallel to it), then only receiver noise.
        face = st.sample_depth_mm < 3.0
        assert float(np.median(st.envelope[face].max(axis=0))) > 100 * float(np.median(st.envelope[~face]))
        assert float(np.median(st.envelope)) < 5 * float(np.median(on_skin.envelope[-20:]) + 1e-3)
        assert st.image.mean() < on_skin.image.mean() / 3
        gt = ground_truth(ph, ph.target_pose.apply_motion([0, 0, -15], [0, 0, 0]), settings)
        assert not gt.contact and gt.quality == 0.0 and gt.target_visible == 0.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ground_truth_at_and_away_from_the_standard_view(preset: str) -> None:
    ph = make_phantom(preset, 5)
    p = PRESETS[preset]
    at = ground_truth(ph, ph.target_pose, p.default)
    assert at.contact and at.target_visible > 0.9 and at.quality > 0.9
    assert at.best_depth_mm in p.depth_steps_mm
    # At the best depth the target fills 60-90 % of the image.
    best = ground_truth(ph, ph.target_pose, p.default.replace(depth_mm=at.best_depth_mm))
    assert 0.5 <= best.target_fill <= 0.9
    assert p.gain_range_db[0] < at.best_gain_db < p.gain_range_db[1]
    assert at.gain_error_db == pytest.approx(p.default.gain_db - at.best_gain_db)
    assert np.allclose(at.correction_mm, 0, atol=1e-6) and np.allclose(at.correction_deg, 0, atol=1e-4)

    away = ph.target_pose.apply_motion([15, 8, 0], [6, -8, 25])
    gt = ground_truth(ph, away, p.default)
    assert gt.quality < 0.3
    reached = away.apply_motion(gt.correction_mm, gt.correction_deg)
    assert pose_error(reached, ph.target_pose)[0] < 1e-6
    # Brighter gain → positive error of the same size.
    brighter = ground_truth(ph, ph.target_pose, p.default.replace(gain_db=p.default.gain_db + 6))
    assert brighter.gain_error_db == pytest.approx(at.gain_error_db + 6, abs=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_view_score_is_ground_truths_visibility_and_quality_without_the_gain(preset: str) -> None:
    ph = make_phantom(preset, 8)
    p = PRESETS[preset]
    poses = [
        ph.target_pose,  # at the view
        ph.target_pose.apply_motion([3, 2, 0], [2, -3, 5]),  # near it
        ph.target_pose.apply_motion([25, -30, 0], [10, 5, 40]),  # target out of the plane
        ph.target_pose.apply_motion([0, 0, -15], [0, 0, 0]),  # lifted off the skin
    ]
    for pose in poses:
        gt, vs = ground_truth(ph, pose, p.default), view_score(ph, pose, p.default)
        assert (vs.target_visible, vs.quality, vs.contact) == (gt.target_visible, gt.quality, gt.contact)
    assert view_score(ph, poses[0], p.default).quality > 0.9
    assert view_score(ph, poses[2], p.default).target_visible < 0.05
    # Far from the target the best depth is the standard view's, the same on every call (it is kept).
    far = [ground_truth(ph, pose, p.default).best_depth_mm for pose in (poses[2], poses[2], poses[3])]
    assert far == [ground_truth(ph, ph.target_pose, p.default).best_depth_mm] * 3


def test_too_shallow_depth_cuts_the_target_off() -> None:
    ph = make_phantom("abdomen", 6)
    p = PRESETS["abdomen"]
    gt = ground_truth(ph, ph.target_pose, p.default)
    shallow = ImagingSettings(gain_db=30, depth_mm=min(p.depth_steps_mm), freq_mhz=3.5)
    cut = ground_truth(ph, ph.target_pose, shallow)
    assert cut.target_fill > 1.0
    assert cut.target_visible < 0.6 * gt.target_visible
    assert cut.quality < gt.quality
