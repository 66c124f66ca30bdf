"""Beam geometry of the probe types and the scan conversion from beams to display pixels.

The beam grid holds ``n_samples`` samples along each of ``n_beams`` beams, from the probe face to the
imaging depth. Display rows run over probe-frame z in [0, depth], columns over x across the field's
full width at that depth (non-square pixels); pixels outside the fan are black.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.presets import ProbeGeometry


@dataclass(frozen=True)
class BeamGrid:
    depth_mm: float
    n_samples: int
    n_beams: int
    sample_mm: float  # spacing along a beam
    origins: np.ndarray  # (n_beams, 3) probe-frame start of each beam (on the face)
    directions: np.ndarray  # (n_beams, 3) unit beam directions, probe frame
    face_sag_mm: np.ndarray  # (n_beams,) how far the face at each beam stands back from the centre plane
    points: np.ndarray  # (n_samples * n_beams, 3) float32 probe-frame sample positions, row = sample
    lateral_spacing_mm: np.ndarray  # (n_samples,) distance between neighbouring beams at each sample
    width_mm: float  # display width


def beam_grid(probe: ProbeGeometry, depth_mm: float, n_samples: int) -> BeamGrid:
    n = probe.n_beams
    s = (np.arange(n_samples) + 0.5) * depth_mm / n_samples
    if probe.kind == "linear":
        x = (np.arange(n) + 0.5) / n * probe.aperture_mm - probe.aperture_mm / 2
        origins = np.column_stack([x, np.zeros(n), np.zeros(n)])
        directions = np.tile([0.0, 0.0, 1.0], (n, 1))
        sag = np.zeros(n)
        lateral = np.full(n_samples, probe.aperture_mm / n)
        width = probe.aperture_mm
    else:
        half = np.radians(probe.fov_deg) / 2
        theta = (np.arange(n) + 0.5) / n * 2 * half - half
        r = probe.radius_mm
        directions = np.column_stack([np.sin(theta), np.zeros(n), np.cos(theta)])
        # Curved: beams start on the arc around the apex at (0, 0, -r); phased: all from the face centre.
        origins = directions * r - np.array([0.0, 0.0, r])
        sag = r * (1 - np.cos(theta))
        dtheta = 2 * half / n
        lateral = np.maximum((r + s) * dtheta, 0.05)
        width = 2 * (r + depth_mm) * np.sin(half)
    pts = origins[None, :, :] + s[:, None, None] * directions[None, :, :]
    return BeamGrid(
        depth_mm=depth_mm,
        n_samples=n_samples,
        n_beams=n,
        sample_mm=depth_mm / n_samples,
        origins=origins,
        directions=directions,
        face_sag_mm=sag,
        points=pts.reshape(-1, 3).astype(np.float32),
        lateral_spacing_mm=lateral,
        width_mm=float(width),
    )


@dataclass(frozen=True)
class ScanConversion:
    """Bilinear lookup from the beam grid into (H, W) display pixels."""

    idx: np.ndarray  # (4, H*W) flat indices into the beam grid
    weights: np.ndarray  # (4, H*W) float32 (zero outside the fan)
    inside: np.ndarray  # (H*W,) bool
    shape: tuple[int, int]

    def apply(self, grid_values: np.ndarray, outside_value: float = 0.0) -> np.ndarray:
        flat = grid_values.reshape(-1)
        out = flat[self.idx[0]] * self.weights[0]
        for k in range(1, 4):
            out += flat[self.idx[k]] * self.weights[k]
        out[~self.inside] = outside_value
        return out.reshape(self.shape)


def display_coordinates(grid: BeamGrid, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Probe-frame (x, z) in mm of each display pixel centre, as (H, W) arrays."""
    h, w = shape
    z = (np.arange(h) + 0.5) / h * grid.depth_mm
    x = (np.arange(w) + 0.5) / w * grid.width_mm - grid.width_mm / 2
    return np.meshgrid(x, z)


def pixel_to_beam(
    probe: ProbeGeometry, grid: BeamGrid, x: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (beam, sample) index of probe-frame points (x, z); out of range means outside the fan."""
    n = grid.n_beams
    if probe.kind == "linear":
        beam = (x + probe.aperture_mm / 2) / probe.aperture_mm * n - 0.5
        sample = z / grid.sample_mm - 0.5
    else:
        r = probe.radius_mm
        half = np.radians(probe.fov_deg) / 2
        theta = np.arctan2(x, z + r)
        s = np.hypot(x, z + r) - r
        beam = (theta + half) / (2 * half) * n - 0.5
        sample = s / grid.sample_mm - 0.5
    return beam, sample


def scan_conversion(probe: ProbeGeometry, grid: BeamGrid, shape: tuple[int, int]) -> ScanConversion:
    x, z = display_coordinates(grid, shape)
    beam, sample = pixel_to_beam(probe, grid, x.ravel(), z.ravel())
    inside = (
        (beam >= -0.5) & (beam <= grid.n_beams - 0.5) & (sample >= -0.5) & (sample <= grid.n_samples - 0.5)
    )
    b = np.clip(beam, 0, grid.n_beams - 1)
    s = np.clip(sample, 0, grid.n_samples - 1)
    b0 = np.minimum(np.floor(b).astype(np.int64), grid.n_beams - 2)
    s0 = np.minimum(np.floor(s).astype(np.int64), grid.n_samples - 2)
    fb = (b - b0).astype(np.float32)
    fs = (s - s0).astype(np.float32)
    nb = grid.n_beams
    idx = np.stack([s0 * nb + b0, s0 * nb + b0 + 1, (s0 + 1) * nb + b0, (s0 + 1) * nb + b0 + 1])
    weights = np.stack([(1 - fs) * (1 - fb), (1 - fs) * fb, fs * (1 - fb), fs * fb]).astype(np.float32)
    weights[:, ~inside] = 0.0
    return ScanConversion(idx=idx, weights=weights, inside=inside, shape=shape)


def block_for_box(
    probe: ProbeGeometry, grid: BeamGrid, box: tuple[float, float, float, float]
) -> tuple[int, int, int, int]:
    """Sample and beam index ranges [s0, s1) x [b0, b1) of the beam grid that cover the probe-frame
    rectangle box = (x0, x1, z0, z1) (conservative, with one index of margin). Scalar math: this runs
    once per structure per frame."""
    x0, x1, z0, z1 = (float(v) for v in box)
    n, ns = grid.n_beams, grid.n_samples
    if probe.kind == "linear":
        b_lo = (x0 + probe.aperture_mm / 2) / probe.aperture_mm * n - 0.5
        b_hi = (x1 + probe.aperture_mm / 2) / probe.aperture_mm * n - 0.5
        s_lo, s_hi = z0 / grid.sample_mm - 0.5, z1 / grid.sample_mm - 0.5
    else:
        r = probe.radius_mm
        half = math.radians(probe.fov_deg) / 2
        corners = [(x, z + r) for x in (x0, x1) for z in (z0, z1)]
        if z0 + r <= 0:
            b_lo, b_hi = -1.0, float(n)
        else:
            theta = [math.atan2(x, zr) for x, zr in corners]
            b_lo = (min(theta) + half) / (2 * half) * n - 0.5
            b_hi = (max(theta) + half) / (2 * half) * n - 0.5
        near = math.hypot(min(max(0.0, x0), x1), min(max(0.0, z0 + r), z1 + r)) - r
        far = max(math.hypot(x, zr) for x, zr in corners) - r
        s_lo, s_hi = near / grid.sample_mm - 0.5, far / grid.sample_mm - 0.5

    def clamp(v: float, hi: int) -> int:
        return int(min(max(v, 0), hi))

    return (
        clamp(math.floor(s_lo) - 1, ns),
        clamp(math.ceil(s_hi) + 2, ns),
        clamp(math.floor(b_lo) - 1, n),
        clamp(math.ceil(b_hi) + 2, n),
    )
