"""The camera seam: one ``rs.pipeline`` opened either on a live camera (by serial number) or on a
``.db3`` recording, or the camera emulator's socket (:mod:`firmware_bridge.camera_wire`, the bench's
live stand-in), giving registered colour (rgb8) + depth (mm) frames. Everything above it is the same
code for all three (:func:`open_camera`).
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.camera_wire import CameraWireError, read_frame, read_hello
from service.tracking.markers import Intrinsics

WIDTH, HEIGHT, FPS = 640, 480, 30  # what a live camera is asked for (D435 colour + depth)


class CameraUnavailableError(Exception):
    """No camera to open: the message names the serial or file and what to check."""


@dataclass(frozen=True)
class CameraSpec:
    kind: str  # "realsense" | "recording" | "emulator"
    serial: str = ""
    recording: str = ""
    socket: str = ""  # emulator: the Unix socket it serves on
    loop: bool = True  # recordings: start again at the end (a bench stand-in for a live camera)
    real_time: bool = True  # recordings: deliver at the recorded rate (False: as fast as read)

    def __post_init__(self) -> None:
        if self.kind == "realsense" and not self.serial:
            raise ValueError("a live RealSense camera needs its serial number")
        if self.kind == "recording" and not self.recording:
            raise ValueError("a recording camera needs the .db3 path")
        if self.kind == "emulator" and not self.socket:
            raise ValueError("the camera emulator needs its socket path")
        if self.kind not in ("realsense", "recording", "emulator"):
            raise ValueError(f"unknown camera kind {self.kind!r} (realsense | recording | emulator)")

    @property
    def label(self) -> str:
        """Short per-device log prefix: ``camera:<serial>`` or ``camera:<file name>``."""
        if self.kind == "realsense":
            return f"camera:{self.serial}"
        return f"camera:{Path(self.recording or self.socket).name}"


@dataclass(frozen=True)
class CameraFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) float32, 0 = no data, registered to rgb
    timestamp_ms: float
    domain: str  # librealsense timestamp domain: hardware_clock | system_time | global_time
    number: int
    arrival_host: float  # injected clock at arrival
    arrival_wall_s: float  # time.time() at arrival (for system-time stamps)


def connected_serials() -> list[str]:
    import pyrealsense2 as rs

    return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]


def check_available(spec: CameraSpec) -> None:
    """Raise :class:`CameraUnavailableError` with a plain message when the camera cannot be there."""
    if spec.kind == "emulator":
        if not Path(spec.socket).exists():
            raise CameraUnavailableError(f"{spec.socket}: no camera emulator serves there (is it running?)")
        return
    if spec.kind == "recording":
        path = Path(spec.recording)
        if path.suffix != ".db3":
            raise CameraUnavailableError(f"{path}: not a librealsense .db3 recording")
        if not path.is_file():
            raise CameraUnavailableError(f"{path}: no such recording file")
        return
    serials = connected_serials()
    if spec.serial not in serials:
        found = ", ".join(serials) if serials else "none"
        raise CameraUnavailableError(
            f"no RealSense camera with serial {spec.serial} is connected (connected: {found}); "
            "check the USB cable and [camera] serial"
        )


class OpenCamera:
    """A started ``rs.pipeline``; ``read`` returns the next registered frame or None on timeout."""

    def __init__(self, spec: CameraSpec, clock_now: Any = time.monotonic) -> None:
        self._paced_playback: Any = None  # a recording read at our pace (not real time)
        import pyrealsense2 as rs

        check_available(spec)
        self.spec = spec
        self._now = clock_now
        self._rs = rs
        self.pipe = rs.pipeline()
        cfg = rs.config()
        if spec.kind == "recording":
            cfg.enable_device_from_file(str(spec.recording), repeat_playback=spec.loop)
        else:
            cfg.enable_device(spec.serial)
            cfg.enable_stream(rs.stream.depth, WIDTH, HEIGHT, rs.format.z16, FPS)
            cfg.enable_stream(rs.stream.color, WIDTH, HEIGHT, rs.format.rgb8, FPS)
        try:
            profile = self.pipe.start(cfg)
        except RuntimeError as e:
            raise CameraUnavailableError(f"{spec.label}: librealsense could not start it: {e}") from None
        device = profile.get_device()
        self.is_recording = spec.kind == "recording"
        if self.is_recording:
            playback = device.as_playback()
            if spec.real_time:
                playback.set_real_time(True)
            else:
                # Playback starts in real time at pipe.start(); frames produced before the switch can
                # be dropped. Pause, switch, rewind, resume: every frame, in order, at our pace.
                playback.pause()
                playback.set_real_time(False)
                playback.seek(datetime.timedelta(0))
                playback.resume()
                self._paced_playback = playback
        self.serial = device.get_info(rs.camera_info.serial_number)
        self.mm_per_unit = float(device.first_depth_sensor().get_depth_scale()) * 1000.0
        colour = profile.get_stream(rs.stream.color).as_video_stream_profile()
        depth = profile.get_stream(rs.stream.depth).as_video_stream_profile()
        self.bgr = colour.format() == rs.format.bgr8
        if colour.format() not in (rs.format.rgb8, rs.format.bgr8) or depth.format() != rs.format.z16:
            self.close()
            raise CameraUnavailableError(f"{spec.label}: needs rgb8/bgr8 colour and z16 depth streams")
        ci, di = colour.get_intrinsics(), depth.get_intrinsics()
        self.intrinsics = Intrinsics.from_rs(ci)
        # Registered already (the simulated recordings) or needs librealsense's depth-to-colour align.
        same = Intrinsics.from_rs(di) == self.intrinsics
        self.align = None if same else rs.align(rs.stream.color)

    def read(self, timeout_ms: int = 1000) -> CameraFrame | None:
        """The next frame with both colour and depth; None when none came within the timeout."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0:
                return None
            ok, frames = self.pipe.try_wait_for_frames(left)
            if not ok:
                return None
            arrival_host, arrival_wall = self._now(), time.time()
            if self.align is not None:
                frames = self.align.process(frames)
            c, d = frames.get_color_frame(), frames.get_depth_frame()
            if c and d:
                break
        rgb = np.asanyarray(c.get_data()).copy()  # librealsense recycles the frame's memory
        if self.bgr:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        depth = np.asanyarray(d.get_data()).astype(np.float32) * np.float32(self.mm_per_unit)
        domain = str(c.get_frame_timestamp_domain()).rsplit(".", 1)[-1]
        return CameraFrame(
            rgb,
            depth,
            float(c.get_timestamp()),
            domain,
            int(c.get_frame_number()),
            arrival_host,
            arrival_wall,
        )

    def close(self) -> None:
        if self._paced_playback is not None:
            # librealsense can hang or abort in stop() on a playback that is not real-time (its issues
            # 2743, 3126; seen here as an abort under load): back to real time first, as they advise.
            with contextlib.suppress(RuntimeError):
                self._paced_playback.set_real_time(True)
        with contextlib.suppress(RuntimeError):  # never started or already stopped
            self.pipe.stop()


class EmulatedCamera:
    """The camera emulator's stream, read like ``OpenCamera``: frames stamped on the host's wall
    clock (``system_time``), as a RealSense with global time enabled stamps them."""

    is_recording = False

    def __init__(self, spec: CameraSpec, clock_now: Any = time.monotonic) -> None:
        check_available(spec)
        self.spec = spec
        self._now = clock_now
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(2.0)
            self.sock.connect(spec.socket)
            self.stream = self.sock.makefile("rb")
            hello = read_hello(self.stream)
        except (OSError, CameraWireError) as e:
            self.sock.close()
            raise CameraUnavailableError(
                f"{spec.label}: the camera emulator could not be read: {e}"
            ) from None
        self.serial = hello.serial
        self.intrinsics = Intrinsics(hello.width, hello.height, hello.fx, hello.fy, hello.ppx, hello.ppy)
        self._hello = hello

    def read(self, timeout_ms: int = 1000) -> CameraFrame | None:
        """The next frame; None when none came within the timeout or the emulator went away."""
        self.sock.settimeout(timeout_ms / 1000.0)
        try:
            f = read_frame(self.stream, self._hello)
        except (OSError, CameraWireError) as e:  # a timeout mid-frame leaves the stream unusable
            raise RuntimeError(f"camera emulator stream: {e}") from None
        if f is None:
            return None
        return CameraFrame(
            f.rgb,
            f.depth_mm.astype(np.float32),
            f.timestamp_ms,
            "system_time",
            f.number,
            self._now(),
            time.time(),
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
            self.sock.close()


def open_camera(spec: CameraSpec, clock_now: Any = time.monotonic) -> OpenCamera | EmulatedCamera:
    """The camera ``spec`` names, started: librealsense for a live camera or a recording, else the
    emulator's socket. :class:`CameraUnavailableError` when it cannot be opened."""
    if spec.kind == "emulator":
        return EmulatedCamera(spec, clock_now)
    return OpenCamera(spec, clock_now)


def read_frames(
    spec: CameraSpec, count: int, timeout_ms: int = 2000
) -> tuple[list[CameraFrame], Intrinsics, str]:
    """Up to ``count`` frames (fewer when a recording ends first), the intrinsics and the serial."""
    cam = open_camera(spec)
    try:
        frames: list[CameraFrame] = []
        while len(frames) < count:
            f = cam.read(timeout_ms)
            if f is None:
                break
            frames.append(f)
        return frames, cam.intrinsics, cam.serial
    finally:
        cam.close()
