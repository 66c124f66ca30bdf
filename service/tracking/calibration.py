"""Camera-to-patient calibration from the three skin stickers, and its JSON file.

The patient frame (docs/architecture.md) has its origin on the skin at the yellow sticker, ``z`` into
the body, ``x`` toward the patient's left (cyan at x = 120 mm), ``y`` toward the head (magenta at
y = 120 mm). The skin curves, so the cyan and magenta stickers lie a few mm to tens of mm deeper than
the origin: their (x, y) are measured in the tangent plane at the origin. The calibration therefore
takes ``z`` as the inward skin normal at the yellow sticker (a quadratic fitted to the depth around
it), ``x`` as the direction to cyan projected onto the tangent plane, and ``y = z × x``; magenta's
position then checks the result (the residual).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.kit import CALIBRATION_STICKERS, Intrinsics
from service.tracking.markers import deproject, detect_stickers
from service.tracking.pose import invert, pose_of, transform, transform_of

FORMAT_VERSION = 1
SKIN_RING_MM = (14.0, 70.0)  # skin samples around the origin sticker used for its normal
MAX_RESIDUAL_MM = 6.0  # stickers placed this far from their table positions → refuse
MIN_FRAMES = 3


class CalibrationError(Exception):
    """The calibration could not be computed or read; the message says what to fix."""


@dataclass(frozen=True)
class CalibrationFrame:
    """What one frame contributes: sticker centres and skin points near the origin (camera frame)."""

    stickers: dict[str, np.ndarray]
    skin_points: np.ndarray  # (N, 3)


@dataclass(frozen=True)
class Calibration:
    T_patient_cam: np.ndarray  # 4×4: camera coordinates -> patient coordinates
    residual_mm: float
    frames: int
    created: str = ""
    camera: str = ""  # serial number or recording name it was made with

    def as_dict(self) -> dict[str, Any]:
        position, quat = pose_of(self.T_patient_cam)
        return {
            "format": FORMAT_VERSION,
            "created": self.created,
            "camera": self.camera,
            "frames": self.frames,
            "residual_mm": round(self.residual_mm, 3),
            # The camera frame in patient coordinates, as the simulator's sidecar writes it.
            "camera_to_patient": {
                "position_mm": [round(float(v), 4) for v in position],
                "quat_wxyz": [round(float(v), 7) for v in quat],
                "matrix": self.T_patient_cam.round(7).tolist(),
            },
        }


def measure_frame(rgb: np.ndarray, depth_mm: np.ndarray, intr: Intrinsics) -> CalibrationFrame | str:
    """The stickers and the skin around the origin in one frame, or why the frame cannot be used."""
    stickers = detect_stickers(rgb, depth_mm, intr)
    missing = [n for n in CALIBRATION_STICKERS if n not in stickers]
    if missing:
        return f"sticker(s) not seen: {', '.join(missing)}"
    origin = stickers["yellow"]
    u, v = origin.centroid_uv
    z = float(origin.centre_mm[2])
    half = int(np.ceil(0.5 * (intr.fx + intr.fy) * SKIN_RING_MM[1] / max(z, 1.0)))
    v0, v1 = max(0, int(v) - half), min(intr.height, int(v) + half + 1)
    u0, u1 = max(0, int(u) - half), min(intr.width, int(u) + half + 1)
    vv, uu = np.mgrid[v0:v1:2, u0:u1:2]  # every other pixel is plenty
    d = depth_mm[vv, uu].astype(float).ravel()
    ok = d > 0
    pts = deproject(intr, np.column_stack([uu.ravel()[ok], vv.ravel()[ok]]), d[ok])
    r = np.linalg.norm(pts - origin.centre_mm, axis=1)
    pts = pts[(r >= SKIN_RING_MM[0]) & (r <= SKIN_RING_MM[1])]
    if len(pts) < 50:
        return "too little depth data around the yellow sticker"
    return CalibrationFrame({n: s.centre_mm for n, s in stickers.items()}, pts)


def skin_normal(points: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Unit normal at ``origin`` of a quadratic surface fitted to skin points, pointing away from the
    camera (into the body). Points off the skin (a probe, a hand) are dropped as outliers."""
    centred = points - origin
    _, _, vt = np.linalg.svd(centred - centred.mean(axis=0), full_matrices=False)
    e1, e2, n = vt[0], vt[1], vt[2]
    keep = np.ones(len(points), dtype=bool)
    for _ in range(3):
        s, t, h = centred @ e1, centred @ e2, centred @ n
        a = np.column_stack([np.ones_like(s), s, t, s * s, s * t, t * t])
        coef, *_ = np.linalg.lstsq(a[keep], h[keep], rcond=None)
        res = np.abs(a @ coef - h)
        new_keep = res < max(2.0, 3.0 * float(np.median(res[keep])) * 1.4826)
        if new_keep.sum() < 30 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    normal = n - coef[1] * e1 - coef[2] * e2  # gradient of h = f(s, t) at the origin
    normal /= np.linalg.norm(normal)
    if normal @ origin < 0:  # the camera is at 0: into the body = away from it
        normal = -normal
    return np.asarray(normal)


def patient_axes(frame: CalibrationFrame) -> np.ndarray:
    """T_cam_patient (4×4) from one frame's stickers and skin."""
    origin = frame.stickers["yellow"]
    z = skin_normal(frame.skin_points, origin)
    to_cyan = frame.stickers["cyan"] - origin
    x = to_cyan - z * float(to_cyan @ z)
    if np.linalg.norm(x) < 1e-6:
        raise CalibrationError("the cyan sticker lies on the skin normal of the yellow one")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return transform(np.column_stack([x, y, z]), origin)


def sticker_residual(T_patient_cam: np.ndarray, stickers: dict[str, np.ndarray]) -> float:
    """RMS distance (mm) in the skin's tangent plane between where the stickers are found and where
    the table says they are."""
    errs = []
    for name, (sx, sy) in CALIBRATION_STICKERS.items():
        p = T_patient_cam[:3, :3] @ stickers[name] + T_patient_cam[:3, 3]
        errs.append((p[0] - sx) ** 2 + (p[1] - sy) ** 2)
    return float(np.sqrt(np.mean(errs)))


def solve(frames: Iterable[CalibrationFrame], camera: str = "") -> Calibration:
    """Average the per-frame solutions (position mean, axes mean re-orthonormalised); refuse when
    too few frames were usable or the stickers are not where the table says."""
    frames = list(frames)
    if len(frames) < MIN_FRAMES:
        raise CalibrationError(
            f"all three stickers were seen in only {len(frames)} frame(s), {MIN_FRAMES} needed: "
            "move the probe and hands out of the camera's view of the stickers"
        )
    ts = [patient_axes(f) for f in frames]
    origin = np.mean([t[:3, 3] for t in ts], axis=0)
    x = np.mean([t[:3, 0] for t in ts], axis=0)
    z = np.mean([t[:3, 2] for t in ts], axis=0)
    z /= np.linalg.norm(z)
    x -= z * float(x @ z)
    x /= np.linalg.norm(x)
    T_patient_cam = invert(transform(np.column_stack([x, np.cross(z, x), z]), origin))
    residual = float(np.sqrt(np.mean([sticker_residual(T_patient_cam, f.stickers) ** 2 for f in frames])))
    if residual > MAX_RESIDUAL_MM:
        raise CalibrationError(
            f"the stickers are {residual:.1f} mm (RMS) from their expected places (limit "
            f"{MAX_RESIDUAL_MM:g} mm): place cyan 120 mm toward the patient's left and magenta 120 mm "
            "toward the head of yellow"
        )
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Calibration(T_patient_cam, residual, len(frames), created, camera)


def calibrate_frames(
    frames: Iterable[tuple[np.ndarray, np.ndarray]], intr: Intrinsics, camera: str = ""
) -> Calibration:
    """The calibration from (rgb, depth mm) frames; the error names what was missing."""
    usable, reasons = [], []
    for rgb, depth in frames:
        got = measure_frame(rgb, depth, intr)
        if isinstance(got, str):
            reasons.append(got)
        else:
            usable.append(got)
    if len(usable) < MIN_FRAMES and reasons:
        common = max(set(reasons), key=reasons.count)
        raise CalibrationError(
            f"all three stickers were seen in only {len(usable)} of {len(usable) + len(reasons)} "
            f"frames ({common}): move the probe and hands out of the camera's view of the stickers"
        )
    return solve(usable, camera)


def save(calibration: Calibration, path: str | Path) -> Path:
    """Write the calibration JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(calibration.as_dict(), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> Calibration:
    """Read a calibration file; a clear :class:`CalibrationError` when it is missing or malformed."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(
            f"{path}: no camera calibration yet (run `sonoguide calibrate-camera`)"
        ) from None
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: unreadable camera calibration: {e}") from None
    try:
        if doc["format"] != FORMAT_VERSION:
            raise CalibrationError(f"{path}: calibration format {doc['format']!r}, expected {FORMAT_VERSION}")
        c2p = doc["camera_to_patient"]
        T_patient_cam = transform_of(np.asarray(c2p["position_mm"]), np.asarray(c2p["quat_wxyz"]))
        return Calibration(
            T_patient_cam, float(doc["residual_mm"]), int(doc["frames"]), str(doc.get("created", "")),
            str(doc.get("camera", "")),
        )  # fmt: skip
    except CalibrationError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"{path}: malformed camera calibration ({type(e).__name__}: {e})") from None
