"""The emulator's image seam: ``ImageSource.render(params, pose, t) -> uint8 (H, W)``.

``PatternImageSource`` is a placeholder that still behaves like an ultrasound image where the link,
CLI and conformance can see it: gain brightens and saturates, depth crops or extends the field of
view, lifting the probe removes the tissue. ``SimImageSource`` renders with the simulator (``sim/``).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from firmware_bridge.emulator.poses import CallablePoseSource, Pose

# World extent of the placeholder tissue block: lateral mm, axial mm, and its sampling.
_WORLD_LATERAL_MM = 200.0
_WORLD_DEPTH_MM = 240.0
_MM_PER_PX = 0.5
_APERTURE_MM = 50.0  # lateral width of the image


class ImageSource(Protocol):
    width: int
    height: int

    def render(self, params: dict[str, Any], pose: Pose, t: float) -> np.ndarray:
        """One B-mode-like image, uint8 (height, width)."""
        ...


def gain_profile(
    gain_db: float, depth_mm: float, freq_mhz: float, tgc_db: list[float], rows: int
) -> np.ndarray:
    """Per-row amplitude factor: overall gain, round-trip attenuation (0.5 dB/cm/MHz) and TGC bands."""
    z_mm = (np.arange(rows, dtype=np.float32) + 0.5) * (depth_mm / rows)
    atten_db = 0.5 * freq_mhz * (2.0 * z_mm / 10.0) * 0.5
    tgc = np.zeros(rows, dtype=np.float32)
    if tgc_db:
        band = np.minimum((np.arange(rows) * len(tgc_db)) // rows, len(tgc_db) - 1)
        tgc = np.asarray(tgc_db, dtype=np.float32)[band]
    db = (gain_db - 50.0) - atten_db + tgc
    return (10.0 ** (db / 20.0)).astype(np.float32)


class PatternImageSource:
    """Seeded speckle with a few bright and dark structures, scanned by a linear aperture that follows x."""

    def __init__(self, width: int = 256, height: int = 256, seed: int = 0) -> None:
        self.width = width
        self.height = height
        rng = np.random.default_rng(seed)
        ny, nx = int(_WORLD_DEPTH_MM / _MM_PER_PX), int(_WORLD_LATERAL_MM / _MM_PER_PX)
        tissue = rng.rayleigh(45.0, size=(ny, nx)).astype(np.float32)
        zz, xx = np.mgrid[0:ny, 0:nx].astype(np.float32) * _MM_PER_PX
        for _ in range(6):  # organs: dark cysts and bright boundaries at seeded places
            cz, cx, r = rng.uniform(20, 200), rng.uniform(10, 190), rng.uniform(6, 20)
            d = np.hypot(zz - cz, xx - cx)
            tissue[d < r] *= 0.15
            tissue[np.abs(d - r) < 1.0] *= 3.0
        tissue[: int(3 / _MM_PER_PX)] *= 2.5  # skin line
        self._tissue = tissue

    def render(self, params: dict[str, Any], pose: Pose, t: float) -> np.ndarray:
        depth_mm = float(params.get("depth_mm", 100.0))
        if not pose.in_contact:  # air under the probe: nothing but a faint noise floor
            return np.zeros((self.height, self.width), dtype=np.uint8)
        ny, nx = self._tissue.shape
        rows = np.minimum((np.linspace(0.0, depth_mm, self.height, endpoint=False) / _MM_PER_PX), ny - 1)
        centre_mm = _WORLD_LATERAL_MM / 2 + float(pose.position_mm[0])
        cols_mm = centre_mm + np.linspace(-_APERTURE_MM / 2, _APERTURE_MM / 2, self.width, endpoint=False)
        cols = np.clip(cols_mm / _MM_PER_PX, 0, nx - 1)
        block = self._tissue[np.ix_(rows.astype(np.intp), cols.astype(np.intp))]
        profile = gain_profile(
            float(params.get("gain_db", 50.0)),
            depth_mm,
            float(params.get("freq_mhz", 3.5)),
            list(params.get("tgc_db", [])),
            self.height,
        )
        img = block * profile[:, None]
        np.clip(img, 0.0, 255.0, out=img)
        return img.astype(np.uint8)


class SimImageSource:
    """B-mode frames from the simulator (``sim/``): a seeded phantom of an exam preset, scanned from the
    emulator's pose with the device's current parameters. ``sim`` is imported here, lazily, so the
    emulator and the conformance suite run without it.

    The probe then reports the preset's controls (:meth:`capabilities`) and starts at the preset's
    default settings (:meth:`default_params`). The simulator's TGC has three bands (near, mid, far).
    """

    TGC_BANDS = 3

    def __init__(self, preset: str = "abdomen", seed: int = 0, width: int = 256, height: int = 256) -> None:
        from sim import phantom, presets, scanner

        if preset not in presets.PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(presets.PRESETS))}")
        self.width = width
        self.height = height
        self.preset = presets.PRESETS[preset]
        self.phantom = phantom.make_phantom(preset, seed=seed)
        self._scanner = scanner.Scanner(self.phantom, size=(height, width))
        self._frame_index = 0

    def capabilities(self) -> dict[str, Any]:
        """The preset's controls, as :class:`~firmware_bridge.emulator.state.Capabilities` fields."""
        return {**preset_capabilities(self.preset), "tgc_bands": self.TGC_BANDS}

    def default_params(self) -> dict[str, float]:
        d = self.preset.default
        return {"gain_db": float(d.gain_db), "depth_mm": float(d.depth_mm), "freq_mhz": float(d.freq_mhz)}

    def sim_pose(self, pose: Pose) -> Any:
        """The emulator's pose as a ``sim.types.Pose``."""
        from sim.types import Pose as SimPose

        return SimPose(np.asarray(pose.position_mm, float), np.asarray(pose.quaternion, float))

    def emulator_pose(self, sim_pose: Any) -> Pose:
        """A ``sim.types.Pose`` as the emulator's pose, with contact judged against this phantom's skin."""
        x, y, z = (float(v) for v in sim_pose.position_mm)
        contact = z >= float(self.phantom.surface_z(x, y)) - 1.0
        return Pose((x, y, z), tuple(float(v) for v in sim_pose.quat_wxyz), contact)  # type: ignore[arg-type]

    def scripted_path(self, period_s: float = 20.0) -> CallablePoseSource:
        """A slow sweep on the skin around the standard view (the CLI's default pose with a preset)."""
        from sim.novice import on_skin

        target = self.phantom.target_pose

        def at(t: float) -> Pose:
            phase = 2 * math.pi * t / period_s
            moved = target.apply_motion(
                [25.0 * math.sin(phase), 10.0 * math.sin(1.7 * phase), 0.0],
                [0.0, 0.0, 15.0 * math.cos(phase)],
            )
            return self.emulator_pose(on_skin(self.phantom, moved))

        return CallablePoseSource(at)

    def render(self, params: dict[str, Any], pose: Pose, t: float) -> np.ndarray:
        from sim.types import ImagingSettings

        tgc = [float(v) for v in params.get("tgc_db", ())] or [0.0]
        if len(tgc) != self.TGC_BANDS:  # another band count: resample the curve to near, mid, far
            tgc = list(np.interp(np.linspace(0, 1, self.TGC_BANDS), np.linspace(0, 1, len(tgc)), tgc))
        settings = ImagingSettings(
            gain_db=float(params["gain_db"]),
            depth_mm=float(params["depth_mm"]),
            freq_mhz=float(params["freq_mhz"]),
            tgc_db=(tgc[0], tgc[1], tgc[2]),
        )
        self._frame_index += 1
        img = self._scanner.render(self.sim_pose(pose), settings, self._frame_index)
        return np.ascontiguousarray(img, dtype=np.uint8)


def preset_capabilities(preset: Any) -> dict[str, Any]:
    """A simulator preset's gain range/step, depth steps and frequencies, spelled as IDENTIFY reports them."""
    return {
        "depths_mm": [float(v) for v in preset.depth_steps_mm],
        "freqs_mhz": [float(v) for v in preset.freqs_mhz],
        "gain_min": float(preset.gain_range_db[0]),
        "gain_max": float(preset.gain_range_db[1]),
        "gain_step": float(preset.gain_step_db),
    }
