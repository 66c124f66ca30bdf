"""The camera emulator's wire format: registered colour + depth frames over a local stream socket.

A bench stand-in for the RealSense's USB link, so the daemon can track a probe that moves live (the
demo's simulated novice) through the same marker detection, fit and calibration as a real camera.

On connect the emulator sends a hello, then frames, each self-delimiting::

    hello = b"SGCAM1\\n" + u32 length + JSON {serial, width, height, fx, fy, ppx, ppy, fps}
    frame = b"FR" + u32 number + f64 timestamp_ms (wall clock, ms since the epoch)
                  + rgb8 (height × width × 3 bytes) + z16 depth in mm (height × width × 2, little endian)

Sizes follow from the hello, so a reader never allocates what a corrupt header claims; a hello
with an absurd size, bad JSON or a frame without its tag is an error that names the problem.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

HELLO_MAGIC = b"SGCAM1\n"
FRAME_TAG = b"FR"
_FRAME_HEADER = struct.Struct("<Id")
MAX_HELLO_BYTES = 4096
MAX_PIXELS = 1920 * 1080  # the largest RealSense colour stream


class CameraWireError(Exception):
    """The stream is not the camera emulator's, or it is damaged: the message says where."""


@dataclass(frozen=True)
class CameraHello:
    serial: str
    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    fps: float

    def encode(self) -> bytes:
        body = json.dumps(self.__dict__).encode()
        return HELLO_MAGIC + struct.pack("<I", len(body)) + body


@dataclass(frozen=True)
class WireFrame:
    number: int
    timestamp_ms: float
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) uint16


def encode_frame(number: int, timestamp_ms: float, rgb: np.ndarray, depth_mm: np.ndarray) -> bytes:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    depth = np.ascontiguousarray(depth_mm, dtype="<u2")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or depth.shape != rgb.shape[:2]:
        raise ValueError(f"rgb {rgb.shape} and depth {depth.shape} are not one registered frame")
    return (
        FRAME_TAG
        + _FRAME_HEADER.pack(number & 0xFFFFFFFF, float(timestamp_ms))
        + rgb.tobytes()
        + depth.tobytes()
    )


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if data is None or len(data) < n:
        got = 0 if not data else len(data)
        raise CameraWireError(f"camera stream ended inside the {what} ({got} of {n} bytes)")
    return data


def read_hello(stream: BinaryIO) -> CameraHello:
    magic = _read_exact(stream, len(HELLO_MAGIC), "hello")
    if magic != HELLO_MAGIC:
        raise CameraWireError(f"not a sonoguide camera emulator stream (starts {magic!r})")
    (length,) = struct.unpack("<I", _read_exact(stream, 4, "hello"))
    if length > MAX_HELLO_BYTES:
        raise CameraWireError(f"camera hello claims {length} bytes (at most {MAX_HELLO_BYTES})")
    try:
        doc = json.loads(_read_exact(stream, length, "hello"))
        hello = CameraHello(
            serial=str(doc["serial"]),
            width=int(doc["width"]),
            height=int(doc["height"]),
            fx=float(doc["fx"]),
            fy=float(doc["fy"]),
            ppx=float(doc["ppx"]),
            ppy=float(doc["ppy"]),
            fps=float(doc["fps"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CameraWireError(f"camera hello is not valid: {e}") from None
    if not (hello.width > 0 and hello.height > 0 and hello.width * hello.height <= MAX_PIXELS):
        raise CameraWireError(f"camera hello gives an impossible image size {hello.width}x{hello.height}")
    if not all(np.isfinite([hello.fx, hello.fy, hello.ppx, hello.ppy])) or hello.fx <= 0 or hello.fy <= 0:
        raise CameraWireError("camera hello gives non-finite or non-positive intrinsics")
    return hello


def read_frame(stream: BinaryIO, hello: CameraHello) -> WireFrame | None:
    """The next frame, or None when the emulator closed the stream between frames."""
    tag = stream.read(len(FRAME_TAG))
    if not tag:
        return None
    if tag != FRAME_TAG:
        raise CameraWireError(f"camera frame does not start with {FRAME_TAG!r} (got {tag!r})")
    number, ts = _FRAME_HEADER.unpack(_read_exact(stream, _FRAME_HEADER.size, "frame header"))
    if not np.isfinite(ts):
        raise CameraWireError(f"camera frame {number} has a non-finite timestamp")
    w, h = hello.width, hello.height
    rgb = np.frombuffer(_read_exact(stream, w * h * 3, f"frame {number} colour"), np.uint8).reshape(h, w, 3)
    depth = np.frombuffer(_read_exact(stream, w * h * 2, f"frame {number} depth"), "<u2").reshape(h, w)
    return WireFrame(int(number), float(ts), rgb, depth)
