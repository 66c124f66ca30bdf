"""Rigid geometry for tracking: Kabsch fit of the probe markers, rigid transforms as 4×4 matrices,
quaternions (w, x, y, z) and slerp. Pure numpy.

Naming: ``T_a_b`` maps coordinates in frame ``b`` to frame ``a`` (so ``T_patient_cam @ T_cam_probe``
is the probe in the patient frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_bridge.kit import PROBE_MARKERS, matrix_to_quat, quat_to_matrix

MAX_FIT_RMS_MM = 2.5  # true fits are ~0.2 mm; a blob of the wrong thing gives several mm
MIN_MARKERS = 3  # three non-collinear points fix all six degrees of freedom


def transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotation
    t[:3, 3] = translation
    return t


def invert(t: np.ndarray) -> np.ndarray:
    r = t[:3, :3]
    return transform(r.T, -r.T @ t[:3, 3])


def apply(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Transform points (N, 3) or (3,)."""
    p = np.asarray(points, dtype=float)
    return p @ t[:3, :3].T + t[:3, 3]


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation R and translation t minimising |R src + t - dst|² (no scale); RMS residual (mm)."""
    src = np.asarray(src, dtype=float)
    dst = np.asarray(dst, dtype=float)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"kabsch needs two (N>=3, 3) point sets, got {src.shape} and {dst.shape}")
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    h = (src - cs).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a reflection is never a pose
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = cd - r @ cs
    rms = float(np.sqrt(np.mean(np.sum((src @ r.T + t - dst) ** 2, axis=1))))
    return r, t, rms


@dataclass(frozen=True)
class ProbeFit:
    T_cam_probe: np.ndarray  # 4×4
    rms_mm: float
    markers: tuple[str, ...]


def fit_probe(centres_cam: dict[str, np.ndarray], max_rms_mm: float = MAX_FIT_RMS_MM) -> ProbeFit | None:
    """The probe pose in the camera frame from the marker sphere centres, or None when fewer than
    three markers are seen or the fit is poor (a wrong blob must give no pose, not a wrong one)."""
    names = tuple(n for n in PROBE_MARKERS if n in centres_cam)
    if len(names) < MIN_MARKERS:
        return None
    src = np.array([PROBE_MARKERS[n] for n in names], dtype=float)
    dst = np.array([centres_cam[n] for n in names], dtype=float)
    r, t, rms = kabsch(src, dst)
    if rms > max_rms_mm:
        return None
    return ProbeFit(transform(r, t), rms, names)


def pose_of(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position mm, quaternion w, x, y, z) of a 4×4 transform."""
    return t[:3, 3].copy(), matrix_to_quat(t[:3, :3])


def transform_of(position_mm: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
    q = np.asarray(quat_wxyz, dtype=float)
    return transform(quat_to_matrix(q / np.linalg.norm(q)), np.asarray(position_mm, dtype=float))


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (w, x, y, z); s may lie outside [0, 1]."""
    q0 = np.asarray(q0, dtype=float)
    q1 = np.asarray(q1, dtype=float)
    dot = float(q0 @ q1)
    if dot < 0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 1.0 - 1e-10:  # (nearly) the same orientation: avoid 0/0
        q = q0 + s * (q1 - q0)
    else:
        theta = np.arccos(min(dot, 1.0))
        q = (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)
    q = q / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def angle_deg(q0: np.ndarray, q1: np.ndarray) -> float:
    """The rotation angle between two orientations (degrees)."""
    return float(np.degrees(2 * np.arccos(min(1.0, abs(float(np.asarray(q0) @ np.asarray(q1)))))))
