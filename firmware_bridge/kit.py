"""The probe kit's physical description: the bottom of the house (docs/architecture.md, "Layers").

What the camera sees of the kit — the coloured marker spheres on the probe's handle and the flat
calibration stickers on the skin — and the pinhole camera model both the simulator (which draws them)
and tracking (which finds them) use. A leaf: numpy only, nothing of the project, so the simulator can
sit on it and the daemon can read it without loading the simulator.

Frames: probe frame as in docs/architecture.md; camera frame x right, y down, z along the optical
axis; millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Probe markers: sphere centres in the probe frame (mm); negative z = on the handle above the face.
PROBE_MARKERS: dict[str, tuple[float, float, float]] = {
    "red": (30.0, 0.0, -70.0),
    "green": (-30.0, 0.0, -70.0),
    "blue": (0.0, 20.0, -100.0),
}
MARKER_RADIUS_MM = 7.0
# Calibration stickers: flat discs on the skin at patient (x, y) (mm).
CALIBRATION_STICKERS: dict[str, tuple[float, float]] = {
    "yellow": (0.0, 0.0),
    "cyan": (120.0, 0.0),
    "magenta": (0.0, 120.0),
}
STICKER_RADIUS_MM = 10.0
# The markers' and stickers' colours (sRGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "cyan": (30, 220, 230),
    "magenta": (230, 40, 210),
}

SUPPORTED_MODELS = ("none", "brown_conrady", "inverse_brown_conrady")


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole + distortion as librealsense reports it (``rs.intrinsics``): the one camera model."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "none"
    coeffs: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.model not in SUPPORTED_MODELS:
            raise ValueError(
                f"distortion model {self.model!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)})"
            )
        if self.fx <= 0 or self.fy <= 0 or self.width <= 0 or self.height <= 0:
            raise ValueError(f"invalid intrinsics: {self}")

    @staticmethod
    def from_rs(intr: Any) -> Intrinsics:
        model = str(intr.model).rsplit(".", 1)[-1]
        c = [float(v) for v in intr.coeffs]
        return Intrinsics(
            int(intr.width), int(intr.height), float(intr.fx), float(intr.fy), float(intr.ppx),
            float(intr.ppy), model, (c[0], c[1], c[2], c[3], c[4]),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
            "ppx": self.ppx, "ppy": self.ppy, "model": self.model, "coeffs": list(self.coeffs),
        }  # fmt: skip

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Pixel (u, v) and depth z (mm) of camera-frame points (N, 3) -> (N, 3); no distortion."""
        cam = np.asarray(points_cam, dtype=float).reshape(-1, 3)
        u = self.fx * cam[:, 0] / cam[:, 2] + self.ppx
        v = self.fy * cam[:, 1] / cam[:, 2] + self.ppy
        return np.column_stack([u, v, cam[:, 2]])


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix (Shepperd's method)."""
    m = np.asarray(m, dtype=float)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    out = np.array(q, dtype=float)
    out /= np.linalg.norm(out)
    return out if out[0] >= 0 else -out
