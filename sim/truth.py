"""Ground truth of a view: what a perfect assistant would say about a pose and settings.

Definitions (also in docs/sim.md):

- **best gain**: the overall gain that puts the median *speckle-averaged* tissue echo of the view
  (beam-grid samples of echogenic tissue under contact, after built-in depth compensation and TGC) at
  ``TARGET_GREY`` (40 of 255: where sonographers put soft tissue on real scanners — the median of the
  non-black pixels is 29, 35 and 51 on the three vendors' images in tests/data/real_us, mean 38). The median of a Rayleigh envelope is
  10·log10(mean power · ln 2), so it is computed without speckle noise; a model can infer it from the
  image's grey levels and the current gain. Clamped to the preset's gain range.
- **best depth**: the smallest of the preset's depth steps that shows the deepest point of the target's
  cross-section with the image plane at most at 90% of the depth (so the target fills ~60–90%).
  Taken from the current plane while at least 5% of the target is visible, else from the standard view.
- **target_visible**: area of the target's cross-section inside the imaged field (fan, depth, beams
  in contact) / area of its cross-section in the standard view, clipped to [0, 1].
- **target_fill**: deepest target point in the (lateral) field of view / depth (> 1: cut off).
- **quality**: target_visible × exp(−½(d/σd)²) × exp(−½(θ/10°)²) with (d, θ) = pose_error to the
  standard view and σd = 20% of the target's long semi-axis (4–10 mm); 0 without contact.
- **correction**: the probe-frame motion (mm, rotation vector degrees) that ``Pose.apply_motion``
  turns into the target pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim import physics
from sim.geometry import pixel_to_beam
from sim.phantom import Phantom
from sim.scanner import Scanner
from sim.tissues import ANECHOIC, LABEL
from sim.types import ImagingSettings, Pose

TARGET_GREY = 40.0
FILL_MAX = 0.9
ANGLE_SIGMA_DEG = 10.0


@dataclass(frozen=True)
class GroundTruth:
    gain_error_db: float
    best_gain_db: float
    best_depth_mm: float
    target_visible: float
    target_fill: float
    quality: float
    contact: bool
    correction_mm: np.ndarray
    correction_deg: np.ndarray
    distance_mm: float
    angle_deg: float

    def as_dict(self) -> dict[str, object]:
        return {
            "gain_error_db": round(self.gain_error_db, 3),
            "best_gain_db": round(self.best_gain_db, 3),
            "best_depth_mm": self.best_depth_mm,
            "target_visible": round(self.target_visible, 4),
            "target_fill": round(self.target_fill, 4),
            "quality": round(self.quality, 4),
            "contact": self.contact,
            "correction_mm": [round(float(v), 3) for v in self.correction_mm],
            "correction_deg": [round(float(v), 3) for v in self.correction_deg],
            "distance_mm": round(self.distance_mm, 3),
            "angle_deg": round(self.angle_deg, 3),
        }


def pose_error(pose: Pose, target_pose: Pose) -> tuple[float, float]:
    """(distance between the face centres in mm, angle of the relative rotation in degrees)."""
    distance = float(np.linalg.norm(pose.position_mm - target_pose.position_mm))
    dot = abs(float(np.dot(pose.quat_wxyz, target_pose.quat_wxyz)))
    angle = float(np.degrees(2 * np.arccos(min(1.0, dot))))
    return distance, angle


def _truth_scanner(phantom: Phantom) -> Scanner:
    sc = getattr(phantom, "_truth_scanner", None)
    if sc is None:
        sc = Scanner(phantom, size=(64, 64), n_samples=128)
        phantom._truth_scanner = sc  # type: ignore[attr-defined]
    return sc


def best_gain_db(phantom: Phantom, pose: Pose, settings: ImagingSettings) -> float | None:
    """The gain that puts the median tissue echo at TARGET_GREY; None when no tissue is imaged."""
    power, labels, depth_gain = _truth_scanner(phantom).expected_power(pose, settings)
    tissue = (labels != LABEL["outside"]) & ~np.isin(labels, list(ANECHOIC))
    if np.count_nonzero(tissue) < 0.02 * labels.size:
        return None
    level = 10 * np.log10(power) + 10 * np.log10(np.log(2.0)) + depth_gain[:, None]
    median = float(np.median(level[tissue]))
    wanted = physics.BLACK_LEVEL_DB + TARGET_GREY * phantom.preset.dynamic_range_db / 255.0
    return phantom.preset.clamp_gain(wanted - median)


def _plane_samples(phantom: Phantom) -> tuple[np.ndarray, np.ndarray, float]:
    """A probe-frame grid (x, z) over the largest field the preset's probe can image, and its cell area."""
    p = phantom.preset
    max_depth = max(p.depth_steps_mm) * 1.25
    step = max_depth / 200.0
    probe = p.probe
    if probe.kind == "linear":
        half_w = probe.aperture_mm / 2
    else:
        half_w = (probe.radius_mm + max_depth) * np.sin(np.radians(probe.fov_deg) / 2)
    xs = np.arange(-half_w, half_w, step) + step / 2
    zs = np.arange(0.0, max_depth, step) + step / 2
    x, z = np.meshgrid(xs, zs)
    return x.ravel(), z.ravel(), step * step


def _cross_section(phantom: Phantom, pose: Pose) -> tuple[np.ndarray, np.ndarray, float]:
    x, z, cell = _plane_samples(phantom)
    pts = pose.to_points(np.column_stack([x, np.zeros_like(x), z])).astype(np.float32)
    inside = phantom.target.contains(pts)
    return x[inside], z[inside], cell


def _deepest_in_fan(phantom: Phantom, x: np.ndarray, z: np.ndarray) -> float:
    probe = phantom.preset.probe
    if probe.kind == "linear":
        lateral_ok = np.abs(x) <= probe.aperture_mm / 2
    else:
        lateral_ok = np.abs(np.degrees(np.arctan2(x, z + probe.radius_mm))) <= probe.fov_deg / 2
    return float(np.max(z[lateral_ok])) if np.any(lateral_ok) else 0.0


def _best_depth(phantom: Phantom, deepest_mm: float) -> float:
    steps = sorted(phantom.preset.depth_steps_mm)
    for d in steps:
        if deepest_mm <= FILL_MAX * d:
            return d
    return steps[-1]


@dataclass(frozen=True)
class ViewScore:
    """What a view shows of the target, without the gain (cheaper than :func:`ground_truth`)."""

    target_visible: float
    quality: float
    contact: bool


def _section_in_view(
    phantom: Phantom, pose: Pose, settings: ImagingSettings
) -> tuple[bool, float, np.ndarray, np.ndarray]:
    """(contact, target_visible, the target's cross-section x and z in the probe frame)."""
    sc = _truth_scanner(phantom)
    grid = sc.grid(settings)
    contact_beams = sc.beam_contact(pose, grid)
    contact = bool(np.mean(contact_beams) >= 0.5)
    semi = phantom.target.semi_mm
    standard_area = float(np.pi * semi[0] * semi[2])
    x, z, cell = _cross_section(phantom, pose)
    visible = 0.0
    if len(x) and np.any(contact_beams):
        beam, sample = pixel_to_beam(phantom.preset.probe, grid, x, z)
        in_fan = (
            (beam >= -0.5)
            & (beam <= grid.n_beams - 0.5)
            & (sample >= -0.5)
            & (sample <= grid.n_samples - 0.5)
        )
        b = np.clip(np.rint(beam), 0, grid.n_beams - 1).astype(int)
        in_fan &= contact_beams[b]
        visible = min(1.0, float(np.count_nonzero(in_fan)) * cell / standard_area)
    return contact, visible, x, z


def _quality(phantom: Phantom, pose: Pose, visible: float, contact: bool) -> tuple[float, float, float]:
    """(quality, distance, angle) of a view showing ``visible`` of the target."""
    distance, angle = pose_error(pose, phantom.target_pose)
    sigma_d = float(np.clip(0.2 * phantom.target.semi_mm[0], 4.0, 10.0))
    pose_term = np.exp(-0.5 * (distance / sigma_d) ** 2) * np.exp(-0.5 * (angle / ANGLE_SIGMA_DEG) ** 2)
    return (float(visible * pose_term) if contact else 0.0), distance, angle


def _standard_best_depth(phantom: Phantom) -> float:
    """The best depth of the standard view (fixed per phantom, so computed once)."""
    depth = getattr(phantom, "_standard_best_depth", None)
    if depth is None:
        xt, zt, _ = _cross_section(phantom, phantom.target_pose)
        depth = _best_depth(phantom, _deepest_in_fan(phantom, xt, zt) if len(xt) else 0.0)
        phantom._standard_best_depth = depth  # type: ignore[attr-defined]
    return depth


def view_score(phantom: Phantom, pose: Pose, settings: ImagingSettings) -> ViewScore:
    """The target's visibility and the view's quality (as in :func:`ground_truth`), without the gain."""
    contact, visible, _, _ = _section_in_view(phantom, pose, settings)
    return ViewScore(visible, _quality(phantom, pose, visible, contact)[0], contact)


def ground_truth(phantom: Phantom, pose: Pose, settings: ImagingSettings) -> GroundTruth:
    contact, visible, x, z = _section_in_view(phantom, pose, settings)
    deepest_here = _deepest_in_fan(phantom, x, z) if len(x) else 0.0
    fill = deepest_here / settings.depth_mm
    best_depth = _best_depth(phantom, deepest_here) if visible >= 0.05 else _standard_best_depth(phantom)

    gain = best_gain_db(phantom, pose, settings) if contact else None
    best_gain = float(settings.gain_db) if gain is None else gain

    quality, distance, angle = _quality(phantom, pose, visible, contact)
    corr_mm, corr_deg = pose.motion_to(phantom.target_pose)
    return GroundTruth(
        gain_error_db=float(settings.gain_db) - best_gain,
        best_gain_db=best_gain,
        best_depth_mm=float(best_depth),
        target_visible=visible,
        target_fill=float(fill),
        quality=quality,
        contact=contact,
        correction_mm=corr_mm,
        correction_deg=corr_deg,
        distance_mm=distance,
        angle_deg=angle,
    )
