"""Exam presets: the probe a scanner would offer for an exam, its controls and the phantom it scans.

``PRESETS`` is the table other packages build against (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.types import ImagingSettings


@dataclass(frozen=True)
class ProbeGeometry:
    """Array geometry in the probe frame (mm, degrees).

    ``linear``: beams parallel to z from the face, across ``aperture_mm``.
    ``curved``: beams normal to an arc of ``radius_mm`` spanning ``fov_deg``; the face centre is the
    arc's midpoint and the centre of curvature (the apex) lies ``radius_mm`` behind it.
    ``phased``: a small flat face; beams steered from its centre across ``fov_deg`` (sector).
    """

    kind: str  # "linear" | "curved" | "phased"
    aperture_mm: float  # footprint along the array (x)
    elevation_mm: float  # footprint across the array (y), for skin contact
    radius_mm: float = 0.0  # curved arrays
    fov_deg: float = 0.0  # curved / phased arrays
    n_beams: int = 128
    f_number: float = 2.0  # receive F-number at the focus: sets the lateral beam width
    fractional_bandwidth: float = 0.6  # sets the axial pulse length

    @property
    def is_sector(self) -> bool:
        return self.kind in ("curved", "phased")


@dataclass(frozen=True)
class ExamPreset:
    name: str
    description: str
    probe: ProbeGeometry
    depth_steps_mm: tuple[float, ...]
    freqs_mhz: tuple[float, ...]
    gain_range_db: tuple[float, float]
    gain_step_db: float
    dynamic_range_db: float
    default: ImagingSettings
    # Phantom: where the target sits below the skin (mm, along the standard-view beam axis).
    target_depth_range_mm: tuple[float, float]
    # Edge of one scatterer cell of the fixed 3-D speckle field (mm); below the finest resolution.
    scatterer_cell_mm: float

    def nearest_depth(self, depth_mm: float) -> float:
        return min(self.depth_steps_mm, key=lambda d: abs(d - depth_mm))

    def clamp_gain(self, gain_db: float) -> float:
        lo, hi = self.gain_range_db
        return float(min(max(gain_db, lo), hi))


PRESETS: dict[str, ExamPreset] = {
    "abdomen": ExamPreset(
        name="abdomen",
        description="curved array, right kidney long axis under liver, 8-16 cm",
        probe=ProbeGeometry(
            kind="curved",
            aperture_mm=60.0,
            elevation_mm=14.0,
            radius_mm=50.0,
            fov_deg=66.0,
            f_number=2.5,
            n_beams=192,
        ),
        depth_steps_mm=(60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0, 200.0),
        freqs_mhz=(2.5, 3.5, 5.0),
        gain_range_db=(0.0, 60.0),
        gain_step_db=1.0,
        dynamic_range_db=60.0,
        default=ImagingSettings(gain_db=26.0, depth_mm=140.0, freq_mhz=3.5),
        target_depth_range_mm=(55.0, 95.0),
        scatterer_cell_mm=0.35,
    ),
    "vascular": ExamPreset(
        name="vascular",
        description="linear array, carotid artery long axis, 2-5 cm",
        probe=ProbeGeometry(kind="linear", aperture_mm=38.0, elevation_mm=8.0, f_number=2.0),
        depth_steps_mm=(20.0, 25.0, 30.0, 40.0, 50.0, 60.0),
        freqs_mhz=(7.5, 10.0, 12.0),
        gain_range_db=(0.0, 60.0),
        gain_step_db=1.0,
        dynamic_range_db=60.0,
        default=ImagingSettings(gain_db=26.0, depth_mm=40.0, freq_mhz=10.0),
        target_depth_range_mm=(12.0, 24.0),
        scatterer_cell_mm=0.12,
    ),
    "cardiac": ExamPreset(
        name="cardiac",
        description="phased array, intercostal heart long axis, 12-18 cm",
        probe=ProbeGeometry(
            kind="phased", aperture_mm=20.0, elevation_mm=14.0, fov_deg=80.0, f_number=3.0, n_beams=192
        ),
        depth_steps_mm=(100.0, 120.0, 140.0, 160.0, 180.0, 200.0),
        freqs_mhz=(2.0, 2.5, 3.5),
        gain_range_db=(0.0, 60.0),
        gain_step_db=1.0,
        dynamic_range_db=55.0,
        default=ImagingSettings(gain_db=26.0, depth_mm=160.0, freq_mhz=2.5),
        target_depth_range_mm=(75.0, 100.0),
        scatterer_cell_mm=0.4,
    ),
}


def get_preset(name: str) -> ExamPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown exam preset {name!r}; choose one of {sorted(PRESETS)}") from None
