"""Value types shared by the simulator and its users: imaging settings and 6-DoF probe poses.

Conventions (docs/architecture.md): lengths in mm, angles in degrees at the API, quaternions
``(w, x, y, z)``. A pose is the probe frame expressed in the patient frame: the rotation matrix's
columns are the probe's x (lateral), y (elevation), z (beam axis) in patient coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from firmware_bridge.kit import matrix_to_quat, quat_to_matrix

ArrayLike = np.ndarray | tuple[float, ...] | list[float]


@dataclass(frozen=True)
class ImagingSettings:
    """What the operator (or the auto controller) sets on the scanner."""

    gain_db: float
    depth_mm: float
    freq_mhz: float
    # Time-gain compensation sliders (near, mid, far), dB added on top of the scanner's built-in curve.
    tgc_db: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def replace(self, **changes: object) -> ImagingSettings:
        values = {
            "gain_db": self.gain_db,
            "depth_mm": self.depth_mm,
            "freq_mhz": self.freq_mhz,
            "tgc_db": self.tgc_db,
        }
        values.update(changes)
        return ImagingSettings(**values)  # type: ignore[arg-type]


def rotvec_to_matrix(rotvec_deg: ArrayLike) -> np.ndarray:
    """Rodrigues: rotation of |v| degrees about the axis v."""
    v = np.radians(np.asarray(rotvec_deg, dtype=float))
    theta = float(np.linalg.norm(v))
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)


def matrix_to_rotvec(m: np.ndarray) -> np.ndarray:
    """Rotation vector (degrees) of a rotation matrix; angle in [0, 180]."""
    q = matrix_to_quat(m)
    w = float(np.clip(q[0], -1.0, 1.0))
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return np.zeros(3)
    angle = 2 * np.arctan2(s, w)
    return np.degrees(angle) * q[1:] / s


@dataclass(frozen=True)
class Pose:
    """Probe face centre (mm, patient frame) and orientation (unit quaternion w, x, y, z)."""

    position_mm: np.ndarray
    quat_wxyz: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))

    def __post_init__(self) -> None:
        p = np.asarray(self.position_mm, dtype=float).reshape(3).copy()
        q = np.asarray(self.quat_wxyz, dtype=float).reshape(4).copy()
        n = float(np.linalg.norm(q))
        if not np.all(np.isfinite(p)) or not np.isfinite(n) or n < 1e-9:
            raise ValueError(f"invalid pose: position {p}, quaternion {q}")
        q /= n
        if q[0] < 0:
            q = -q
        p.flags.writeable = False
        q.flags.writeable = False
        object.__setattr__(self, "position_mm", p)
        object.__setattr__(self, "quat_wxyz", q)

    @staticmethod
    def from_matrix(position_mm: ArrayLike, rotation: np.ndarray) -> Pose:
        return Pose(np.asarray(position_mm, dtype=float), matrix_to_quat(rotation))

    @staticmethod
    def from_rotation_vector(position_mm: ArrayLike, rotvec_deg: ArrayLike) -> Pose:
        return Pose.from_matrix(position_mm, rotvec_to_matrix(rotvec_deg))

    def rotation_matrix(self) -> np.ndarray:
        return quat_to_matrix(self.quat_wxyz)

    def compose(self, other: Pose) -> Pose:
        """``self ∘ other``: ``other`` expressed in ``self``'s frame, mapped to ``self``'s parent frame."""
        r = self.rotation_matrix()
        return Pose.from_matrix(self.position_mm + r @ other.position_mm, r @ other.rotation_matrix())

    def inverse(self) -> Pose:
        rt = self.rotation_matrix().T
        return Pose.from_matrix(-rt @ self.position_mm, rt)

    def apply_motion(self, translation_mm: ArrayLike, rotation_deg: ArrayLike) -> Pose:
        """Move in the current probe frame: translate, then rotate about the (moved) face centre."""
        return self.compose(Pose.from_rotation_vector(translation_mm, rotation_deg))

    def motion_to(self, target: Pose) -> tuple[np.ndarray, np.ndarray]:
        """The probe-frame motion (mm, rotation vector in degrees) that ``apply_motion`` turns into ``target``."""
        delta = self.inverse().compose(target)
        return delta.position_mm.copy(), matrix_to_rotvec(delta.rotation_matrix())

    def to_points(self, probe_points: np.ndarray) -> np.ndarray:
        """Probe-frame points (N, 3) in patient coordinates."""
        return np.asarray(probe_points) @ self.rotation_matrix().T + self.position_mm

    @property
    def axes(self) -> np.ndarray:
        """Columns: probe x (lateral), y (elevation), z (beam) in patient coordinates."""
        return self.rotation_matrix()

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "position_mm": [round(float(v), 4) for v in self.position_mm],
            "quat_wxyz": [round(float(v), 6) for v in self.quat_wxyz],
        }

    @staticmethod
    def from_dict(d: dict[str, list[float]]) -> Pose:
        return Pose(np.asarray(d["position_mm"], dtype=float), np.asarray(d["quat_wxyz"], dtype=float))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pose):
            return NotImplemented
        return bool(
            np.array_equal(self.position_mm, other.position_mm)
            and np.array_equal(self.quat_wxyz, other.quat_wxyz)
        )

    def __hash__(self) -> int:
        return hash((self.position_mm.tobytes(), self.quat_wxyz.tobytes()))

    def __repr__(self) -> str:
        p = ", ".join(f"{v:.2f}" for v in self.position_mm)
        q = ", ".join(f"{v:.4f}" for v in self.quat_wxyz)
        return f"Pose(position_mm=({p}), quat_wxyz=({q}))"


def look_rotation(beam_axis: ArrayLike, lateral_hint: ArrayLike) -> np.ndarray:
    """A rotation whose z column is ``beam_axis`` and whose x column is as close to ``lateral_hint`` as possible."""
    z = np.asarray(beam_axis, dtype=float)
    z = z / np.linalg.norm(z)
    x = np.asarray(lateral_hint, dtype=float)
    x = x - z * float(x @ z)
    nx = float(np.linalg.norm(x))
    if nx < 1e-9:
        raise ValueError("lateral_hint is parallel to the beam axis")
    x = x / nx
    y = np.cross(z, x)
    return np.column_stack([x, y, z])
