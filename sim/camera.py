"""The RealSense-like camera scene: the patient, calibration stickers and the probe with its markers,
seen from above as registered colour (rgb8) and depth (z16, 1 mm) images, and written as a real
librealsense recording (.db3) through pyrealsense2's software_device and recorder.

Frames: camera x right, y down, z forward (optical axis); ``CameraModel.pose`` maps camera to patient.
Depth is the z coordinate in the camera frame (as RealSense reports it), 0 = no data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.kit import (
    CALIBRATION_STICKERS,
    COLOURS,
    MARKER_RADIUS_MM,
    PROBE_MARKERS,
    STICKER_RADIUS_MM,
    Intrinsics,
)
from sim.phantom import Phantom, make_phantom
from sim.types import Pose, look_rotation, rotvec_to_matrix

log = logging.getLogger(__name__)

SKIN_RGB = (214, 170, 140)
TABLE_RGB = (70, 80, 95)
PROBE_RGB = (70, 72, 80)
HAND_RGB = (196, 150, 120)
# The probe housing: a box in the probe frame (mm) from the face up the handle.
PROBE_BOX = (np.array([-18.0, -12.0, -125.0]), np.array([18.0, 12.0, 0.0]))
BODY_HALF_WIDTH_MM = 170.0
TABLE_Z_MM = 180.0
FPS = 30
DEPTH_UNIT_M = 0.001


@dataclass(frozen=True)
class CameraModel:
    """The simulated camera: the kit's pinhole model (no distortion) placed over the patient."""

    intrinsics: Intrinsics
    pose: Pose  # camera frame in patient coordinates

    @property
    def width(self) -> int:
        return self.intrinsics.width

    @property
    def height(self) -> int:
        return self.intrinsics.height

    def intrinsics_dict(self) -> dict[str, float | int]:
        i = self.intrinsics
        return {"width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "ppx": i.ppx, "ppy": i.ppy}

    def project(self, points_patient: np.ndarray) -> np.ndarray:
        """Pixel (u, v) and camera depth z (mm) of patient points (N, 3) -> (N, 3)."""
        return self.intrinsics.project(self.pose.inverse().to_points(points_patient))


def default_camera(seed: int) -> CameraModel:
    """A D435-like colour camera (640x480, ~55° wide) about 600 mm above the patient, looking down
    with a small seeded tilt; image down = toward the patient's head (+y)."""
    rng = np.random.default_rng([int(seed), 0xCA3])
    centre = np.array([50.0, 50.0, 0.0]) + np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 0.0])
    down = rotvec_to_matrix([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0]) @ np.array([0.0, 0.0, 1.0])
    height = rng.uniform(560, 640)
    position = centre - down * height
    rot = look_rotation(down, [1.0, 0.0, 0.0])  # camera x ~ patient x, y ~ patient y, z = optical axis
    intrinsics = Intrinsics(
        width=640,
        height=480,
        fx=float(rng.uniform(605, 620)),
        fy=float(rng.uniform(605, 620)),
        ppx=float(320 + rng.uniform(-4, 4)),
        ppy=float(240 + rng.uniform(-4, 4)),
    )
    return CameraModel(intrinsics, pose=Pose.from_matrix(position, rot))


@dataclass(frozen=True)
class Occluder:
    """A hand or arm passing between camera and probe: a sphere (patient frame, mm)."""

    center: np.ndarray
    radius_mm: float


def _rays(cam: CameraModel) -> np.ndarray:
    """Patient-frame ray directions (H*W, 3) float32, scaled so that camera z = 1: the ray parameter
    of a hit is its depth."""
    u, v = np.meshgrid(np.arange(cam.width, dtype=np.float32), np.arange(cam.height, dtype=np.float32))
    d_cam = np.stack(
        [
            (u - cam.intrinsics.ppx) / cam.intrinsics.fx,
            (v - cam.intrinsics.ppy) / cam.intrinsics.fy,
            np.ones_like(u),
        ],
        axis=-1,
    ).reshape(-1, 3)
    return d_cam @ cam.pose.rotation_matrix().T.astype(np.float32)


def _hit_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, r: float) -> np.ndarray:
    oc = (o - centre).astype(np.float32)
    b = d @ oc
    a = np.einsum("ij,ij->i", d, d)
    c = np.float32(oc @ oc - r * r)
    disc = b * b - a * c
    t = np.full(len(d), np.inf, dtype=np.float32)
    ok = disc >= 0
    t[ok] = (-b[ok] - np.sqrt(disc[ok])) / a[ok]
    t[t <= 0] = np.inf
    return t


def _hit_box(o: np.ndarray, d: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter of the probe housing (inf = miss) and which face axis was hit."""
    inv = pose.inverse()
    rot = inv.rotation_matrix()
    o_l = (rot @ o + inv.position_mm).astype(np.float32)
    d_l = d @ rot.T.astype(np.float32)
    d_l = np.where(np.abs(d_l) < 1e-9, np.float32(1e-9), d_l)
    lo, hi = (v.astype(np.float32) for v in PROBE_BOX)
    t1 = (lo - o_l) / d_l
    t2 = (hi - o_l) / d_l
    tmin = np.minimum(t1, t2)
    t_near = tmin.max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf).astype(np.float32), tmin.argmax(axis=1)


@dataclass(frozen=True)
class _Background:
    """What does not move: table, body and stickers, before shading noise."""

    rays: np.ndarray
    t: np.ndarray
    rgb: np.ndarray
    noise: np.ndarray  # a table of unit normals to draw per-frame noise from


_BACKGROUNDS: dict[tuple[int, int, CameraModel], _Background] = {}


def _background(phantom: Phantom, cam: CameraModel) -> _Background:
    key = (id(phantom), phantom.seed, cam)
    if key in _BACKGROUNDS:
        return _BACKGROUNDS[key]
    d = _rays(cam)
    o = cam.pose.position_mm
    n = len(d)
    t_table = (TABLE_Z_MM - o[2]) / d[:, 2]
    best_t = np.where(t_table > 0, t_table, np.inf).astype(np.float32)
    rgb = np.empty((n, 3), dtype=np.float32)
    rgb[:] = TABLE_RGB
    cx, cy = phantom.curvature
    a = cx * d[:, 0] ** 2 + cy * d[:, 1] ** 2
    b = 2 * (cx * o[0] * d[:, 0] + cy * o[1] * d[:, 1]) - d[:, 2]
    c = cx * o[0] ** 2 + cy * o[1] ** 2 - o[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0))
        t_body = np.where(np.abs(a) > 1e-12, (-b - disc) / (2 * a), -c / b)
    hit = o[None, :] + t_body[:, None] * d
    body = (t_body > 0) & (np.abs(hit[:, 0]) < BODY_HALF_WIDTH_MM) & (t_body < best_t)
    best_t[body] = t_body[body]
    normal_z = 1.0 / np.sqrt(1 + (2 * cx * hit[body, 0]) ** 2 + (2 * cy * hit[body, 1]) ** 2)
    rgb[body] = np.array(SKIN_RGB, dtype=np.float32) * (0.55 + 0.45 * normal_z[:, None])
    for name, (sx, sy) in CALIBRATION_STICKERS.items():
        on = body & ((hit[:, 0] - sx) ** 2 + (hit[:, 1] - sy) ** 2 <= STICKER_RADIUS_MM**2)
        rgb[on] = COLOURS[name]
    noise = np.random.default_rng([phantom.seed, 0xB6]).standard_normal(5 * n).astype(np.float32)
    bg = _Background(d, best_t, rgb, noise)
    if len(_BACKGROUNDS) > 8:
        _BACKGROUNDS.clear()
    _BACKGROUNDS[key] = bg
    return bg


def _roi(cam: CameraModel, centre: np.ndarray, radius: float) -> np.ndarray | None:
    """Flat pixel indices of the image rectangle that a sphere (patient frame) can cover."""
    uvz = cam.project(centre[None, :])[0]
    if uvz[2] <= radius:
        return np.arange(cam.width * cam.height)
    half = radius * max(cam.intrinsics.fx, cam.intrinsics.fy) / (uvz[2] - radius) + 2
    u0, u1 = int(max(0, uvz[0] - half)), int(min(cam.width, uvz[0] + half + 1))
    v0, v1 = int(max(0, uvz[1] - half)), int(min(cam.height, uvz[1] + half + 1))
    if u0 >= u1 or v0 >= v1:
        return None
    vv, uu = np.mgrid[v0:v1, u0:u1]
    return (vv * cam.width + uu).ravel()


def render_camera(
    phantom: Phantom,
    probe_pose: Pose | None,
    cam: CameraModel,
    frame_index: int,
    seed: int = 0,
    occluder: Occluder | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour (H, W, 3) uint8 and depth (H, W) uint16 in mm of one frame."""
    bg = _background(phantom, cam)
    rng = np.random.default_rng([int(seed), int(frame_index), 0xD3])
    o = cam.pose.position_mm
    n = len(bg.t)
    best_t = bg.t.copy()
    rgb = bg.rgb.copy()

    if probe_pose is not None:
        # Everything attached to the probe lies within this sphere around the handle.
        centre = probe_pose.to_points(np.array([[0.0, 0.0, -60.0]]))[0]
        idx = _roi(cam, centre, 85.0)
        if idx is not None:
            d = bg.rays[idx]
            t_box, face = _hit_box(o, d, probe_pose)
            closer = t_box < best_t[idx]
            best_t[idx[closer]] = t_box[closer]
            rgb[idx[closer]] = (
                np.array(PROBE_RGB, dtype=np.float32)
                * np.array([0.8, 0.7, 1.0], dtype=np.float32)[face[closer], None]
            )
            for name, marker in PROBE_MARKERS.items():
                pc = probe_pose.to_points(np.array([marker]))[0]
                t_s = _hit_sphere(o, d, pc, MARKER_RADIUS_MM)
                closer = t_s < best_t[idx]
                p = o[None, :] + t_s[closer, None] * d[closer]
                nrm = (p - pc) / MARKER_RADIUS_MM
                view = -d[closer] / np.linalg.norm(d[closer], axis=1, keepdims=True)
                shade = 0.45 + 0.55 * np.clip(np.einsum("ij,ij->i", nrm, view), 0, 1)
                best_t[idx[closer]] = t_s[closer]
                rgb[idx[closer]] = np.array(COLOURS[name], dtype=np.float32) * shade[:, None]
    if occluder is not None:
        idx = _roi(cam, occluder.center, occluder.radius_mm)
        if idx is not None:
            t_o = _hit_sphere(o, bg.rays[idx], occluder.center, occluder.radius_mm)
            closer = t_o < best_t[idx]
            best_t[idx[closer]] = t_o[closer]
            rgb[idx[closer]] = np.array(HAND_RGB, dtype=np.float32) * 0.85

    start = int(rng.integers(0, len(bg.noise) - 4 * n))
    colour = rgb + 2.5 * bg.noise[start : start + 3 * n].reshape(n, 3)
    colour_img = np.clip(colour, 0, 255).astype(np.uint8).reshape(cam.height, cam.width, 3)
    # Depth: z in the camera frame (the ray parameter), stereo noise growing with z², a few dropouts.
    z = best_t + bg.noise[start + 3 * n : start + 4 * n] * np.float32(0.8 / 600.0**2) * best_t * best_t
    dropout = bg.noise[start + 3 * n + 7 : start + 4 * n + 7] > 2.6  # ~0.5 % of pixels
    valid = np.isfinite(z) & (z > 0) & (z < 65535) & ~dropout
    depth = np.where(valid, np.rint(z), 0).astype(np.uint16).reshape(cam.height, cam.width)
    return colour_img, depth


def _occluder_track(
    cam: CameraModel, probe_pose: Pose, rng: np.random.Generator, n_frames: int
) -> list[Occluder | None]:
    """Now and then (about one pass every 3 s) a hand crosses the line of sight to the probe."""
    out: list[Occluder | None] = [None] * n_frames
    k = int(rng.integers(5, 20))
    while k < n_frames:
        length = int(rng.integers(8, 20))
        start_side = rng.uniform(0, 2 * np.pi)
        for j in range(length):
            if k + j >= n_frames:
                break
            frac = j / max(length - 1, 1)
            offset = (frac - 0.5) * 240 * np.array([np.cos(start_side), np.sin(start_side), 0.0])
            towards_cam = cam.pose.position_mm - probe_pose.position_mm
            mid = probe_pose.position_mm + 0.45 * towards_cam
            out[k + j] = Occluder(mid + offset, 45.0)
        k += length + int(rng.integers(60, 120))
    return out


def default_poses(phantom: Phantom, seed: int, n_frames: int) -> list[Pose]:
    """A novice's unguided search from a random start, one pose per camera frame."""
    from sim.novice import UnguidedNovice, random_start_pose

    pose = random_start_pose(phantom, seed)
    searcher = UnguidedNovice(seed)
    poses = []
    for _ in range(n_frames):
        poses.append(pose)
        pose = searcher.step(pose, 1.0 / FPS, phantom)
    return poses


def write_recording(
    path: str | Path,
    seed: int,
    seconds: float,
    poses: list[Pose] | None = None,
    preset: str = "abdomen",
    occlusion: bool = True,
) -> dict[str, object]:
    """Write a librealsense recording (.db3) of the scene and a sidecar JSON (``<path>.json``) with
    the intrinsics, the camera-to-patient extrinsics, depth units and the true probe pose per frame."""
    import pyrealsense2 as rs

    path = Path(path)
    if path.suffix != ".db3":
        raise ValueError(f"{path}: librealsense 2.59 writes only .db3 recordings")
    n_frames = max(1, round(seconds * FPS))
    phantom = make_phantom(preset, seed)
    cam = default_camera(seed)
    poses = list(poses) if poses is not None else default_poses(phantom, seed, n_frames)
    if len(poses) < n_frames:
        raise ValueError(f"{len(poses)} poses given for {n_frames} frames")
    rng = np.random.default_rng([int(seed), 0x0CC])
    occluders = _occluder_track(cam, poses[0], rng, n_frames) if occlusion else [None] * n_frames

    tmp = path.with_name(f".{path.stem}.partial.db3")  # librealsense insists on the .db3 suffix
    tmp.unlink(missing_ok=True)
    dev = rs.software_device()
    dev.register_info(rs.camera_info.name, "sonoguide simulated D435")
    dev.register_info(rs.camera_info.serial_number, f"SIM{seed:08d}")
    depth_sensor = dev.add_sensor("Stereo Module")
    colour_sensor = dev.add_sensor("RGB Camera")
    intr = rs.intrinsics()
    intr.width, intr.height = cam.width, cam.height
    k = cam.intrinsics
    intr.fx, intr.fy, intr.ppx, intr.ppy = k.fx, k.fy, k.ppx, k.ppy
    intr.model = rs.distortion.brown_conrady
    intr.coeffs = [0.0, 0.0, 0.0, 0.0, 0.0]

    def stream(kind: rs.stream, uid: int, fmt: rs.format, bpp: int) -> rs.video_stream:
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = kind, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = cam.width, cam.height, FPS, bpp, fmt
        vs.intrinsics = intr
        return vs

    depth_profile = depth_sensor.add_video_stream(stream(rs.stream.depth, 0, rs.format.z16, 2), True)
    colour_profile = colour_sensor.add_video_stream(stream(rs.stream.color, 1, rs.format.rgb8, 3), True)
    depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNIT_M)
    identity = rs.extrinsics()
    identity.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    identity.translation = [0.0, 0.0, 0.0]
    depth_profile.register_extrinsics_to(colour_profile, identity)  # registered streams

    frames_meta = []
    recorder = rs.recorder(str(tmp), dev)
    try:
        depth_sensor.open(depth_profile)
        colour_sensor.open(colour_profile)
        depth_sensor.start(lambda f: None)
        colour_sensor.start(lambda f: None)
        injected_at = -1.0
        for i in range(n_frames):
            colour, depth = render_camera(phantom, poses[i], cam, i, seed, occluders[i])
            ts = i * 1000.0 / FPS
            # The recorder stamps each frame with the wall time it was handed over, and playback in
            # real time replays those stamps: hand frames over no faster than the frame rate, or the
            # recording plays faster than its own frame timestamps say (slower only if rendering is).
            injected_at = max(injected_at + 1.0 / FPS, time.monotonic())
            time.sleep(max(0.0, injected_at - time.monotonic()))
            for sensor, profile, pixels, bpp in (
                (depth_sensor, depth_profile, depth, 2),
                (colour_sensor, colour_profile, colour, 3),
            ):
                f = rs.software_video_frame()
                f.pixels = np.ascontiguousarray(pixels)
                f.bpp = bpp
                f.stride = bpp * cam.width
                f.timestamp = ts
                f.domain = rs.timestamp_domain.hardware_clock
                f.frame_number = i
                f.profile = profile.as_video_stream_profile()
                if bpp == 2:
                    f.depth_units = DEPTH_UNIT_M
                sensor.on_video_frame(f)
            frames_meta.append(
                {
                    "frame_number": i,
                    "timestamp_ms": ts,
                    "probe_pose": poses[i].as_dict(),
                    "occluded": occluders[i] is not None,
                }
            )
        depth_sensor.stop()
        colour_sensor.stop()
        depth_sensor.close()
        colour_sensor.close()
    finally:
        del recorder  # closes and flushes the file
    tmp.replace(path)
    sidecar = path.with_name(path.name + ".json")
    doc = {
        "recording": path.name,
        "preset": preset,
        "seed": seed,
        "fps": FPS,
        "frames": n_frames,
        "depth_units_m": DEPTH_UNIT_M,
        "intrinsics": cam.intrinsics_dict(),
        "streams": {"color": "rgb8", "depth": "z16", "registered": True},
        "camera_to_patient": {
            **cam.pose.as_dict(),
            "matrix": np.vstack(
                [np.column_stack([cam.pose.rotation_matrix(), cam.pose.position_mm]), [0, 0, 0, 1]]
            )
            .round(6)
            .tolist(),
        },
        "probe_markers_mm": PROBE_MARKERS,
        "marker_radius_mm": MARKER_RADIUS_MM,
        "calibration_stickers_mm": CALIBRATION_STICKERS,
        "sticker_radius_mm": STICKER_RADIUS_MM,
        "target_pose": phantom.target_pose.as_dict(),
        "per_frame": frames_meta,
    }
    from sim.png import write_atomic

    write_atomic(sidecar, (json.dumps(doc, indent=1) + "\n").encode())
    log.info("wrote %d camera frames to %s", n_frames, path)
    return {"frames": n_frames, "sidecar": str(sidecar), "path": str(path)}
