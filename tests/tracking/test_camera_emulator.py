"""The camera emulator behind the same seam as a RealSense: its wire format refuses damaged streams
by name, and the daemon's CameraSource calibrates on it and tracks the probe it renders, live."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.camera_wire import (
    HELLO_MAGIC,
    CameraHello,
    CameraWireError,
    encode_frame,
    read_frame,
    read_hello,
)
from firmware_bridge.emulator.camera import CameraEmulator
from service.tracking import calibration as cal
from service.tracking.camera import CameraSource
from service.tracking.device import CameraSpec, CameraUnavailableError, open_camera, read_frames
from sim.camera import Occluder, default_camera
from sim.novice import random_start_pose
from sim.phantom import make_phantom
from sim.truth import pose_error
from tests.tracking.tracking_bench import wait_until

HELLO = CameraHello("EMU1", 4, 3, 600.0, 600.0, 2.0, 1.5, 20.0)


def test_wire_round_trip_and_damaged_streams_named() -> None:
    rgb = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    stream = io.BytesIO(HELLO.encode() + encode_frame(7, 1234.5, rgb, depth))
    assert read_hello(stream) == HELLO
    f = read_frame(stream, HELLO)
    assert f is not None and f.number == 7 and f.timestamp_ms == 1234.5
    assert np.array_equal(f.rgb, rgb) and np.array_equal(f.depth_mm, depth)
    assert read_frame(stream, HELLO) is None  # closed between frames: the end, not an error

    cases = {
        b"RIFF0000": "not a sonoguide camera emulator stream",
        HELLO_MAGIC + struct.pack("<I", 10**6): "claims 1000000 bytes",
        HELLO_MAGIC + struct.pack("<I", 5) + b"{bad}": "not valid",
        CameraHello("x", 100000, 100000, 1, 1, 0, 0, 30).encode(): "impossible image size",
        CameraHello("x", 4, 3, float("nan"), 1, 0, 0, 30).encode(): "non-finite",
    }
    for data, fragment in cases.items():
        with pytest.raises(CameraWireError, match=fragment):
            read_hello(io.BytesIO(data))
    whole = encode_frame(1, 1.0, rgb, depth)
    for data, fragment in (
        (b"XX" + whole[2:], "does not start with"),
        (whole[:-5], "ended inside the frame 1 depth"),
        (encode_frame(2, float("inf"), rgb, depth), "non-finite timestamp"),
    ):
        with pytest.raises(CameraWireError, match=fragment):
            read_frame(io.BytesIO(data), HELLO)
    with pytest.raises(ValueError, match="not one registered frame"):
        encode_frame(1, 1.0, rgb, depth[:2])


def test_daemon_camera_source_calibrates_tracks_the_emulated_probe_and_finds_it_after_each_loss(
    tmp_path: Path,
) -> None:
    socket_path, calibration = tmp_path / "camera.sock", tmp_path / "calibration.json"
    with pytest.raises(CameraUnavailableError, match="no camera emulator serves there"):
        open_camera(CameraSpec("emulator", socket=str(socket_path)))
    phantom = make_phantom("abdomen", 7)
    pose = [random_start_pose(phantom, 7)]
    placed = [False]  # off the patient while calibrating: the probe would hide a sticker
    towards_camera = default_camera(7).pose.position_mm - pose[0].position_mm
    hand = [None, Occluder(pose[0].position_mm + 0.45 * towards_camera, 45.0)]
    covered = [False]

    def start_emulator() -> CameraEmulator:
        return CameraEmulator(
            socket_path, phantom, lambda: pose[0] if placed[0] else None, seed=7,
            occluder=lambda: hand[covered[0]],
        ).start()  # fmt: skip

    emulator = start_emulator()
    source = None
    try:
        spec = CameraSpec("emulator", socket=str(socket_path))
        frames, intrinsics, serial = read_frames(spec, 5)
        assert len(frames) == 5 and serial == "EMU00000007" and frames[0].domain == "system_time"
        cal.save(cal.calibrate_frames(((f.rgb, f.depth_mm) for f in frames), intrinsics, serial), calibration)
        placed[0] = True
        source = CameraSource(spec, calibration, retry_s=0.2).start()
        for _ in range(2):  # where the probe is now, then after it moved 20 mm
            deadline = time.monotonic() + 20.0
            got = None
            while time.monotonic() < deadline:
                got = source.pose_at(time.monotonic())
                near = got is not None and np.linalg.norm(got.position_mm - pose[0].position_mm) < 3.0
                if near and source.state == "tracking":  # read together: one frame may miss a marker
                    break
                time.sleep(0.05)
            assert got is not None and source.state == "tracking", source.last_error
            distance, angle = pose_error(
                type(pose[0]).from_matrix(got.position_mm, got.patient_from_probe), pose[0]
            )
            assert distance < 3.0 and angle < 3.0
            pose[0] = pose[0].apply_motion(np.array([20.0, 0.0, 0.0]), np.zeros(3))
        # A hand over the markers, the stream stopping with the connection open, the cable pulled:
        # each is said (lost, absent) and each time the camera is back the probe is tracked again.
        src = source
        covered[0] = True
        assert wait_until(lambda: src.state == "lost"), src.state
        covered[0] = False
        assert wait_until(lambda: src.state == "tracking"), src.state
        emulator.stalled.set()
        assert wait_until(lambda: src.state == "absent"), src.state
        emulator.stalled.clear()
        assert wait_until(lambda: src.state == "tracking"), (src.state, src.last_error)
        emulator.stop()
        assert wait_until(lambda: src.state == "absent" and "no camera emulator" in src.last_error), (
            src.last_error
        )
        emulator = start_emulator()
        assert wait_until(lambda: src.state == "tracking"), (src.state, src.last_error)
        said = iter(s for _, s in src.state_log)  # in this order (a frame missing a marker may add more)
        expected = ("lost", "tracking", "absent", "searching", "tracking", "absent", "searching", "tracking")
        assert all(state in said for state in expected), list(src.state_log)
    finally:
        if source is not None:
            source.stop()
        emulator.stop()
    assert not socket_path.exists()


def test_a_socket_path_too_long_for_unix_sockets_is_refused_by_name(tmp_path: Path) -> None:
    long_path = tmp_path / ("d" * 120) / "camera.sock"
    with pytest.raises(ValueError, match=r"camera socket path .* is \d+ bytes; .* at most 107"):
        CameraEmulator(str(long_path), make_phantom("abdomen", 1), lambda: None, 1).start()
    assert not long_path.exists()
