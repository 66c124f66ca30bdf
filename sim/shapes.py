"""Solid primitives in patient coordinates (mm), each testing many points at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Ellipsoid:
    center: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3): columns are the unit semi-axis directions
    semi_mm: np.ndarray  # (3,): semi-axis lengths along those columns

    def local(self, points: np.ndarray) -> np.ndarray:
        """Points in units of the semi-axes (inside when the norm is <= 1)."""
        scale = (self.axes / self.semi_mm[None, :]).astype(np.float32)
        return (points - self.center.astype(np.float32)) @ scale

    def contains(self, points: np.ndarray) -> np.ndarray:
        u = self.local(points)
        return np.einsum("ij,ij->i", u, u) <= 1.0

    def bounding_radius(self) -> float:
        return float(np.max(self.semi_mm))

    def plane_box(self, rot: np.ndarray, origin: np.ndarray) -> Box | None:
        """Bounds (x0, x1, z0, z1) of the shape's section by the probe's image plane (y = 0 in the
        frame ``rot``, ``origin``); None when the plane misses it."""
        m = rot.T @ self.axes
        c = rot.T @ (self.center - origin)
        half = np.sqrt(np.sum((m * self.semi_mm[None, :]) ** 2, axis=1))
        if abs(c[1]) > half[1]:
            return None
        return (c[0] - half[0], c[0] + half[0], c[2] - half[2], c[2] + half[2])


@dataclass(frozen=True)
class Cylinder:
    """A round tube of ``radius_mm`` around the segment centre ± half_length_mm along ``direction``."""

    center: np.ndarray
    direction: np.ndarray  # unit
    radius_mm: float
    half_length_mm: float = 1e6

    def contains(self, points: np.ndarray) -> np.ndarray:
        v = points - self.center.astype(np.float32)
        t = v @ self.direction.astype(np.float32)
        d2 = np.einsum("ij,ij->i", v, v) - t * t
        inside = d2 <= self.radius_mm**2
        if self.half_length_mm < 1e5:
            inside &= np.abs(t) <= self.half_length_mm
        return inside

    def bounding_radius(self) -> float:
        return float(max(self.radius_mm, self.half_length_mm))

    def plane_box(self, rot: np.ndarray, origin: np.ndarray) -> Box | None:
        """Bounds (x0, x1, z0, z1) of the tube's section by the image plane; None when it misses."""
        u = rot.T @ self.direction
        c = rot.T @ (self.center - origin)
        r = self.radius_mm
        if self.half_length_mm < 1e5:
            ends = np.stack([c - u * self.half_length_mm, c + u * self.half_length_mm])
            if np.all(ends[:, 1] > r) or np.all(ends[:, 1] < -r):
                return None
            return (ends[:, 0].min() - r, ends[:, 0].max() + r, ends[:, 2].min() - r, ends[:, 2].max() + r)
        if abs(u[1]) < 1e-6:
            return None if abs(c[1]) > r else (-1e9, 1e9, -1e9, 1e9)
        q = c - u * (c[1] / u[1])
        ext = r / abs(u[1])
        return (q[0] - ext, q[0] + ext, q[2] - ext, q[2] + ext)


Shape = Ellipsoid | Cylinder


def aabb_hits(shape: Shape, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Cheap reject: could ``shape`` touch the axis-aligned box [lo, hi]?"""
    if isinstance(shape, Cylinder) and shape.half_length_mm >= 1e5:
        # Infinite tube: distance from the box centre to its axis.
        c = (lo + hi) / 2
        v = c - shape.center
        t = float(v @ shape.direction)
        d = float(np.linalg.norm(v - t * shape.direction))
        return d <= shape.radius_mm + float(np.linalg.norm(hi - lo)) / 2
    r = shape.bounding_radius()
    return bool(np.all(shape.center + r >= lo) and np.all(shape.center - r <= hi))
