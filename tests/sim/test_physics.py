"""Physics checks of the B-mode simulator (the issue's acceptance), on a QA block and on the presets."""

from __future__ import annotations

import numpy as np
import pytest

from sim import physics
from sim.phantom import make_phantom, qa_phantom
from sim.presets import PRESETS
from sim.scanner import Scanner, Stages
from sim.tissues import LABEL
from sim.truth import TARGET_GREY, ground_truth
from sim.types import ImagingSettings, Pose

FACE = Pose(np.zeros(3))


@pytest.fixture(scope="module")
def qa() -> Scanner:
    return Scanner(qa_phantom(atten_db_cm_mhz=0.5, seed=11))


def _left(st: Stages) -> np.ndarray:
    """Beams of the QA block's left half, away from the cyst and the rod at x = +20 mm."""
    return st.envelope[:, : st.envelope.shape[1] // 2 - 8]


def test_envelope_snr_of_fully_developed_speckle(qa: Scanner) -> None:
    st = qa.render_stages(FACE, ImagingSettings(30, 140, 3.5))
    rows = (st.sample_depth_mm > 10) & (st.sample_depth_mm < 35)
    env = _left(st)[rows]
    env = env / env.mean(axis=1, keepdims=True)  # remove the slow fall with depth
    snr = float(env.mean() / env.std())
    assert snr == pytest.approx(1.91, abs=0.15)


@pytest.mark.parametrize(("alpha", "freq"), [(0.5, 3.5), (0.7, 2.5), (0.3, 5.0)])
def test_mean_echo_falls_with_the_configured_attenuation(alpha: float, freq: float) -> None:
    sc = Scanner(qa_phantom(atten_db_cm_mhz=alpha, seed=2))
    st = sc.render_stages(FACE, ImagingSettings(0, 140, freq))  # envelope: no gain, no TGC
    power = (_left(st) ** 2).mean(axis=1)
    s = st.sample_depth_mm
    rows = (s > 10) & (s < 110)
    slope = np.polyfit(s[rows] / 10.0, 10 * np.log10(power[rows]), 1)[0]
    expected = -2 * alpha * freq  # dB/cm, round trip
    assert slope == pytest.approx(expected, rel=0.10)


def test_gain_shifts_display_by_g_times_255_over_dr_until_saturation(qa: Scanner) -> None:
    dr = PRESETS["abdomen"].dynamic_range_db
    base = qa.render(FACE, ImagingSettings(20, 140, 3.5), 3).astype(float)
    for g in (3.0, 6.0, 12.0):
        up = qa.render(FACE, ImagingSettings(20 + g, 140, 3.5), 3).astype(float)
        ok = (base > 1) & (up < 254) & (base < 254)
        assert ok.sum() > 5000
        assert np.median(up[ok] - base[ok]) == pytest.approx(g * 255 / dr, abs=0.6)
        assert np.all(np.abs(up[ok] - base[ok] - g * 255 / dr) <= 1.01)
    # Too much gain washes the image out: at the top of the gain range most tissue is near white.
    top = PRESETS["abdomen"].gain_range_db[1]
    tissue = (
        qa.to_display(
            (qa.render_stages(FACE, ImagingSettings(top, 140, 3.5)).labels == LABEL["qa_tissue"]),
            ImagingSettings(top, 140, 3.5),
        )
        > 0.99
    )
    saturated = qa.render(FACE, ImagingSettings(top, 140, 3.5), 3)
    assert np.mean(saturated[tissue] >= 200) > 0.5


def _lateral_correlation_length(env: np.ndarray, max_lag: int = 11) -> float:
    """Lateral correlation length (in beams): the sum of the normalised autocovariance along each row."""
    x = env - env.mean(axis=1, keepdims=True)
    c0 = float((x * x).mean())
    return 1 + 2 * sum(float((x[:, k:] * x[:, :-k]).mean()) / c0 for k in range(1, max_lag + 1))


def _grid_region(st: Stages, beams: slice, depth: tuple[float, float]) -> np.ndarray:
    rows = (st.sample_depth_mm > depth[0]) & (st.sample_depth_mm < depth[1])
    return st.envelope[rows, beams]


def test_fluid_is_anechoic_with_posterior_enhancement(qa: Scanner) -> None:
    settings = ImagingSettings(26, 140, 3.5)
    st = qa.render_stages(FACE, settings)
    cyst = st.labels == LABEL["fluid"]
    tissue = st.labels == LABEL["qa_tissue"]
    rows_of_cyst = np.any(cyst, axis=1)
    same_depth_tissue = tissue & rows_of_cyst[:, None]
    assert st.grey[cyst].mean() < 10 and st.grey[same_depth_tissue].mean() > 80
    # Less attenuation through fluid: tissue just behind the cyst is brighter than beside it.
    beams = np.flatnonzero(cyst.any(axis=0))
    core = slice(beams[len(beams) // 3], beams[2 * len(beams) // 3])
    behind = _grid_region(st, core, (48, 60))
    beside = _grid_region(st, slice(10, 40), (48, 60))
    gain_db = 10 * np.log10((behind**2).mean() / (beside**2).mean())
    assert gain_db > 2.0


def test_bone_casts_an_acoustic_shadow(qa: Scanner) -> None:
    st = qa.render_stages(FACE, ImagingSettings(30, 140, 3.5))
    bone = st.labels == LABEL["bone"]
    beams = np.flatnonzero(bone.any(axis=0))
    core = slice(beams[len(beams) // 3], beams[2 * len(beams) // 3] + 1)
    top_edge = st.envelope[np.argmax(bone[:, core], axis=0), np.arange(core.start, core.stop)]
    beside_at_rod = _grid_region(st, slice(10, 40), (76, 84))
    assert np.median(top_edge) > 3 * np.median(beside_at_rod)  # bright bone surface
    behind = _grid_region(st, core, (90, 130))
    beside = _grid_region(st, slice(10, 40), (90, 130))
    assert 10 * np.log10((behind**2).mean() / (beside**2).mean()) < -20


def test_ribs_shadow_the_heart_when_the_probe_slides_onto_one() -> None:
    ph = make_phantom("cardiac", 8)
    sc = Scanner(ph)
    settings = PRESETS["cardiac"].default
    window = sc.render_stages(ph.target_pose, settings)
    # Sweep in elevation until the face sits over a rib.
    means = []
    for dy in np.arange(-20, 21, 2.0):
        st = sc.render_stages(ph.target_pose.apply_motion([0, dy, 0], [0, 0, 0]), settings)
        means.append((st.image.mean(), np.any(st.labels == LABEL["bone"])))
    darkest, has_bone = min(means)
    assert has_bone and darkest < 0.4 * window.image.mean()


def test_too_little_gain_loses_the_deep_field_and_best_gain_shows_it() -> None:
    ph = make_phantom("abdomen", 9)
    sc = Scanner(ph)
    settings = PRESETS["abdomen"].default
    best = ground_truth(ph, ph.target_pose, settings).best_gain_db
    h = sc.size[0]
    fan = sc.to_display(np.ones((sc.n_samples, ph.preset.probe.n_beams)), settings) > 0.5
    deep = np.zeros_like(fan)
    deep[int(0.75 * h) :] = True
    deep &= fan
    low = sc.render(ph.target_pose, settings.replace(gain_db=best - 25), 1)
    good = sc.render(ph.target_pose, settings.replace(gain_db=best), 1)
    assert np.mean(low[deep] == 0) > 0.8  # the deep field is below the displayed floor
    assert np.mean(good[deep] == 0) < 0.5  # the speckle's dark tail still dips below black there
    # At the best gain the median tissue sits at the reference grey, not saturated.
    tissue = sc.to_display(np.ones((sc.n_samples, ph.preset.probe.n_beams)), settings) > 0.5
    assert TARGET_GREY - 15 < np.median(good[tissue]) < TARGET_GREY + 25


def test_higher_frequency_resolves_better_but_penetrates_less(qa: Scanner) -> None:
    lengths, penetration = {}, {}
    for f in (2.5, 3.5, 5.0):
        settings = ImagingSettings(30, 200, f)
        st = qa.render_stages(FACE, settings)
        at_focus = qa.render_stages(FACE, settings.replace(depth_mm=140))  # transmit focus at 70 mm
        lifted = qa.render_stages(FACE.apply_motion([0, 0, -20], [0, 0, 0]), settings)
        noise = lifted.envelope[lifted.sample_depth_mm > 20.0]  # below the lens ring-down
        noise_power = float((noise**2).mean())
        power = (_left(st) ** 2).mean(axis=1)
        below = np.flatnonzero(power < 4 * noise_power)  # echo within ~5 dB of the noise
        penetration[f] = st.sample_depth_mm[below[0]] if len(below) else np.inf
        band = _grid_region(at_focus, slice(0, 80), (55, 85))
        lengths[f] = _lateral_correlation_length(band, max_lag=7)
    assert lengths[5.0] < lengths[3.5] < lengths[2.5]
    assert penetration[5.0] < penetration[3.5] < 200 and penetration[2.5] >= penetration[3.5]
    assert penetration[5.0] < 170


def test_psf_shrinks_with_frequency() -> None:
    probe = PRESETS["abdomen"].probe
    z = np.array([30.0, 70.0, 120.0])
    for lo, hi in ((2.5, 3.5), (3.5, 5.0)):
        assert physics.axial_fwhm_mm(hi, probe) < physics.axial_fwhm_mm(lo, probe)
        assert np.all(physics.lateral_fwhm_mm(hi, probe, z, 70) < physics.lateral_fwhm_mm(lo, probe, z, 70))
    # The beam is narrowest near its focus.
    w = physics.lateral_fwhm_mm(3.5, probe, np.array([20.0, 70.0, 140.0]), 70)
    assert w[1] < w[0] and w[1] < w[2]


def test_speckle_moves_with_the_tissue_and_decorrelates_out_of_plane() -> None:
    ph = qa_phantom(seed=4, preset="vascular")
    sc = Scanner(ph)
    settings = ImagingSettings(30, 30, 10.0)
    a = sc.render_stages(FACE, settings).envelope
    spacing = ph.preset.probe.aperture_mm / ph.preset.probe.n_beams

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        # Speckle fluctuation only: divide out the mean fall with depth.
        x = x / x.mean(axis=1, keepdims=True)
        y = y / y.mean(axis=1, keepdims=True)
        return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])

    rows = slice(30, 150)
    # Slide by 4 beam spacings: the pattern shifts across the image with the tissue.
    slid = sc.render_stages(FACE.apply_motion([4 * spacing, 0, 0], [0, 0, 0]), settings).envelope
    assert corr(a[rows, 4:-4], slid[rows, :-8]) > 0.8
    assert corr(a[rows, 4:-4], slid[rows, 4:-4]) < 0.3
    # Out of plane: a tiny sweep keeps the speckle, a few mm replaces it.
    near = sc.render_stages(FACE.apply_motion([0, 0.02, 0], [0, 0, 0]), settings).envelope
    far = sc.render_stages(FACE.apply_motion([0, 2.0, 0], [0, 0, 0]), settings).envelope
    assert corr(a[rows], near[rows]) > 0.7
    assert corr(a[rows], far[rows]) < 0.2


def test_receiver_noise_has_the_beam_width_grain_and_its_set_power() -> None:
    """Noise passes the receive beamformer as echoes do: a real scanner's noise is blurred across
    beams by the beam width like speckle is (not independent from beam to beam), and the filtering
    leaves its power as set."""
    noise_db = -40.0
    sc = Scanner(qa_phantom(atten_db_cm_mhz=0.5, seed=11), noise_db=noise_db)
    settings = ImagingSettings(30, 140, 3.5)
    lifted = sc.render_stages(FACE.apply_motion([0, 0, -20], [0, 0, 0]), settings)
    on = Scanner(qa_phantom(atten_db_cm_mhz=0.5, seed=11)).render_stages(FACE, settings)
    noise = lifted.envelope[lifted.sample_depth_mm > 30.0][:, 20:-20]  # below the lens ring-down
    speckle = _left(on)[(on.sample_depth_mm > 10) & (on.sample_depth_mm < 35)]
    # Independent beams would give 1; speckle adds its scatterer cells to the beam width.
    assert 1.5 < _lateral_correlation_length(noise) < _lateral_correlation_length(speckle)
    assert 10 * np.log10(float((noise**2).mean())) == pytest.approx(noise_db, abs=1.0)
