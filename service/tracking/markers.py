"""Finding the coloured probe markers and the calibration stickers in one registered colour + depth
frame. Pure numpy/scipy: no librealsense here (``Intrinsics.from_rs`` only reads attributes).

Conventions: camera frame x right, y down, z along the optical axis, millimetres; depth images are
camera z in millimetres (the caller applies the device's depth scale), 0 = no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from firmware_bridge.kit import (
    CALIBRATION_STICKERS,
    COLOURS,
    MARKER_RADIUS_MM,
    PROBE_MARKERS,
    STICKER_RADIUS_MM,
    Intrinsics,
)


def deproject(intr: Intrinsics, uv: np.ndarray, depth_mm: np.ndarray) -> np.ndarray:
    """Camera-frame points (N, 3) mm of pixels (N, 2) at camera depths (N,): librealsense's
    ``rs2_deproject_pixel_to_point`` (the distortion is undone by the same fixed-point iteration)."""
    uv = np.asarray(uv, dtype=float).reshape(-1, 2)
    z = np.asarray(depth_mm, dtype=float).reshape(-1)
    x = (uv[:, 0] - intr.ppx) / intr.fx
    y = (uv[:, 1] - intr.ppy) / intr.fy
    if intr.model != "none" and any(intr.coeffs):
        k1, k2, p1, p2, k3 = intr.coeffs
        xo, yo = x.copy(), y.copy()
        for _ in range(10):  # librealsense uses 10 iterations too
            r2 = x * x + y * y
            icdist = 1.0 / (1.0 + ((k3 * r2 + k2) * r2 + k1) * r2)
            if intr.model == "inverse_brown_conrady":
                xq, yq = x / icdist, y / icdist
            else:
                xq, yq = x, y
            dx = 2 * p1 * xq * yq + p2 * (r2 + 2 * xq * xq)
            dy = 2 * p2 * xq * yq + p1 * (r2 + 2 * yq * yq)
            x = (xo - dx) * icdist
            y = (yo - dy) * icdist
    return np.column_stack([x * z, y * z, z])


# --- colour classification ---------------------------------------------------------------------------


def _hue_deg(rgb: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    r, g, b = c[:, 0], c[:, 1], c[:, 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0


REFERENCE_HUE = {name: float(_hue_deg(rgb)[0]) for name, rgb in COLOURS.items()}
MIN_SATURATION = 0.55  # markers and stickers ~0.85; skin, hand, table, probe housing < 0.4
MIN_VALUE = 60  # the darkest shaded side of a marker is ~100
HUE_TOLERANCE_DEG = 22.0  # neighbouring reference hues are >= 50° apart
MIN_VISIBLE_FRACTION = 0.1  # of a marker's disc: a cap peeking past the handle still fits a sphere


def classify_colours(rgb: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Boolean masks (H, W) of strongly saturated pixels whose hue is within tolerance of each name's
    reference colour. Hue and saturation ignore brightness, so shading on a sphere does not matter."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an rgb8 image (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi = np.maximum(np.maximum(r, g), b).astype(np.int32)  # ~15x faster than max(axis=2)
    lo = np.minimum(np.minimum(r, g), b)
    # Saturation test in integers: (max - min) >= s * max, without dividing the whole image.
    strong = (hi >= MIN_VALUE) & ((hi - lo) * 100 >= int(MIN_SATURATION * 100) * hi)
    rows, cols = np.nonzero(strong)
    hue = _hue_deg(rgb[rows, cols])
    masks = {}
    for name in names:
        diff = np.abs((hue - REFERENCE_HUE[name] + 180.0) % 360.0 - 180.0)
        keep = diff <= HUE_TOLERANCE_DEG
        mask = np.zeros(rgb.shape[:2], dtype=bool)
        mask[rows[keep], cols[keep]] = True
        masks[name] = mask
    return masks


@dataclass(frozen=True)
class Blob:
    """One connected region of a colour: pixel centroid, area and the pixels themselves."""

    name: str
    centroid_uv: tuple[float, float]
    area_px: int
    rows: np.ndarray
    cols: np.ndarray


def blobs_of(mask: np.ndarray, name: str, min_area_px: int) -> list[Blob]:
    """Connected regions (8-connected) of at least ``min_area_px`` pixels, largest first."""
    rows_any, cols_any = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows_any) == 0:
        return []
    r0, c0 = int(rows_any[0]), int(cols_any[0])
    # Label only the bounding box of the mask: a colour covers a few hundred pixels of the frame.
    labels, _ = ndimage.label(
        mask[r0 : rows_any[-1] + 1, c0 : cols_any[-1] + 1], structure=np.ones((3, 3), dtype=bool)
    )
    areas = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    out = []
    for index in np.argsort(areas)[::-1]:
        if areas[index] < min_area_px:
            break
        box = boxes[index]
        assert box is not None
        rows, cols = np.nonzero(labels[box] == index + 1)
        rows, cols = rows + box[0].start + r0, cols + box[1].start + c0
        out.append(Blob(name, (float(cols.mean()), float(rows.mean())), int(areas[index]), rows, cols))
    return out


def disc_median_depth(depth_mm: np.ndarray, u: float, v: float, radius_px: float) -> float:
    """Median of the valid (non-zero) depths within a disc around (u, v); NaN when there are none."""
    r = max(1, int(np.ceil(radius_px)))
    v0, v1 = max(0, int(v) - r), min(depth_mm.shape[0], int(v) + r + 2)
    u0, u1 = max(0, int(u) - r), min(depth_mm.shape[1], int(u) + r + 2)
    patch = depth_mm[v0:v1, u0:u1].astype(float)
    vv, uu = np.mgrid[v0:v1, u0:u1]
    inside = ((uu - u) ** 2 + (vv - v) ** 2 <= radius_px**2) & (patch > 0)
    return float(np.median(patch[inside])) if inside.any() else float("nan")


# --- probe markers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkerObservation:
    name: str
    centre_mm: np.ndarray  # sphere centre, camera frame
    centroid_uv: tuple[float, float]
    area_px: int
    fit_rms_mm: float  # RMS distance of the surface points from the fitted sphere


def fit_sphere_known_radius(points: np.ndarray, radius: float, start: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of a sphere of known radius through surface points (Gauss–Newton); RMS residual.

    Works on the one visible cap a camera sees; the known radius keeps the depth of the centre defined.
    """
    c = np.asarray(start, dtype=float).copy()
    for _ in range(8):
        d = points - c
        dist = np.linalg.norm(d, axis=1)
        dist = np.where(dist < 1e-9, 1e-9, dist)
        res = dist - radius
        jac = -d / dist[:, None]
        step, *_ = np.linalg.lstsq(jac, -res, rcond=None)
        c += step
        if float(np.linalg.norm(step)) < 1e-4:
            break
    res = np.linalg.norm(points - c, axis=1) - radius
    return c, float(np.sqrt(np.mean(res**2)))


def expected_radius_px(intr: Intrinsics, radius_mm: float, depth_mm: float) -> float:
    return float(0.5 * (intr.fx + intr.fy) * radius_mm / max(depth_mm, 1.0))


def locate_marker(blob: Blob, depth_mm: np.ndarray, intr: Intrinsics) -> MarkerObservation | None:
    """The 3-D centre of one marker sphere from its blob, or None when the blob is not a plausible
    sphere (size against depth, shape, too few depth samples, poor sphere fit)."""
    u, v = blob.centroid_uv
    # The depth camera sees the sphere's surface: the median in a small disc sits about one radius in
    # front of the centre along the viewing ray.
    guess_r = np.sqrt(blob.area_px / np.pi)
    z_surface = disc_median_depth(depth_mm, u, v, max(1.5, 0.4 * guess_r))
    if not np.isfinite(z_surface):
        return None
    r_px = expected_radius_px(intr, MARKER_RADIUS_MM, z_surface + MARKER_RADIUS_MM)
    area_expected = np.pi * r_px**2
    if not MIN_VISIBLE_FRACTION * area_expected <= blob.area_px <= 1.6 * area_expected:
        return None  # a differently sized thing of the same colour, or mostly hidden
    if max(np.ptp(blob.rows), np.ptp(blob.cols)) + 1 > 2.6 * r_px:
        return None  # elongated: not a sphere
    surface = deproject(intr, np.array([[u, v]]), np.array([z_surface]))[0]
    ray = surface / np.linalg.norm(surface)
    start = surface + MARKER_RADIUS_MM * ray
    # Refine with all the blob's depth samples (robust to a part hidden behind the handle), dropping
    # edge pixels whose depth belongs to the background.
    d = depth_mm[blob.rows, blob.cols].astype(float)
    ok = (d > 0) & (np.abs(d - z_surface) < 2.0 * MARKER_RADIUS_MM)
    if ok.sum() < 8:
        return None
    pts = deproject(intr, np.column_stack([blob.cols[ok], blob.rows[ok]]), d[ok])
    centre, rms = fit_sphere_known_radius(pts, MARKER_RADIUS_MM, start)
    near = np.abs(np.linalg.norm(pts - centre, axis=1) - MARKER_RADIUS_MM) < 2.5
    if near.sum() >= 8 and near.sum() < len(pts):
        centre, rms = fit_sphere_known_radius(pts[near], MARKER_RADIUS_MM, centre)
    if rms > 2.0 or np.linalg.norm(centre - start) > MARKER_RADIUS_MM:
        return None
    return MarkerObservation(blob.name, centre, blob.centroid_uv, blob.area_px, rms)


def detect_markers(rgb: np.ndarray, depth_mm: np.ndarray, intr: Intrinsics) -> dict[str, MarkerObservation]:
    """Each probe marker found in the frame (at most one per colour: the largest plausible blob)."""
    _check_frame(rgb, depth_mm, intr)
    names = tuple(PROBE_MARKERS)
    found: dict[str, MarkerObservation] = {}
    for name, mask in classify_colours(rgb, names).items():
        for blob in blobs_of(mask, name, min_area_px=12)[:3]:
            obs = locate_marker(blob, depth_mm, intr)
            if obs is not None:
                found[name] = obs
                break
    return found


# --- calibration stickers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StickerObservation:
    name: str
    centre_mm: np.ndarray  # centre of the disc, camera frame
    centroid_uv: tuple[float, float]
    area_px: int


def detect_stickers(rgb: np.ndarray, depth_mm: np.ndarray, intr: Intrinsics) -> dict[str, StickerObservation]:
    """Each calibration sticker found: the mean of its deprojected pixels is the disc's centre (the
    pixels sample the flat disc almost uniformly at these distances)."""
    _check_frame(rgb, depth_mm, intr)
    found: dict[str, StickerObservation] = {}
    for name, mask in classify_colours(rgb, tuple(CALIBRATION_STICKERS)).items():
        for blob in blobs_of(mask, name, min_area_px=30)[:3]:
            d = depth_mm[blob.rows, blob.cols].astype(float)
            ok = d > 0
            if ok.sum() < 20:
                continue
            z = float(np.median(d[ok]))
            r_px = expected_radius_px(intr, STICKER_RADIUS_MM, z)
            # A disc seen at an angle looks smaller, never larger; a partly covered one is rejected
            # because its centroid would be off.
            if not 0.5 * np.pi * r_px**2 <= blob.area_px <= 1.4 * np.pi * r_px**2:
                continue
            ok &= np.abs(d - z) < STICKER_RADIUS_MM
            pts = deproject(intr, np.column_stack([blob.cols[ok], blob.rows[ok]]), d[ok])
            found[name] = StickerObservation(name, pts.mean(axis=0), blob.centroid_uv, blob.area_px)
            break
    return found


def _check_frame(rgb: np.ndarray, depth_mm: np.ndarray, intr: Intrinsics) -> None:
    if rgb.shape[:2] != depth_mm.shape or depth_mm.shape != (intr.height, intr.width):
        raise ValueError(
            f"colour {rgb.shape[:2]}, depth {depth_mm.shape} and intrinsics "
            f"{intr.width}x{intr.height} disagree: the streams must be registered (same size)"
        )
