"""The reference camera emulator: a simulated RealSense that renders the probe where it is now.

``CameraEmulator`` renders the simulator's camera scene (``sim.camera.render_camera``: the patient,
the calibration stickers, the probe with its markers) at the pose the pose callback gives at each
frame time, and streams the frames to one reader at a time over a Unix socket
(:mod:`firmware_bridge.camera_wire`). The daemon reads it with ``[camera] source = "emulator"``
through the same tracking code as a real camera. ``sim`` is imported lazily, as the probe emulator does.

Faults (the fault campaign's camera loss): ``occluder()`` puts a hand (``sim.camera.Occluder``) in
the picture; ``stalled`` set stops the stream with the connection left open (a camera whose frames
stop coming); :meth:`stop` is the cable pulled (the socket goes away).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_bridge.camera_wire import CameraHello, encode_frame

log = logging.getLogger(__name__)

UNIX_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


class CameraEmulator:
    def __init__(
        self,
        socket_path: str | Path,
        phantom: Any,
        pose: Callable[[], Any],
        seed: int = 0,
        fps: float = 20.0,
        occluder: Callable[[], Any] | None = None,
    ) -> None:
        """``phantom``: a ``sim.phantom.Phantom``; ``pose()``: the probe's ``sim.types.Pose`` now, or
        None (no probe in view); ``occluder()``: a ``sim.camera.Occluder`` in the line of sight now,
        or None."""
        from sim.camera import default_camera

        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(socket_path)
        self.phantom = phantom
        self.pose = pose
        self.occluder = occluder
        self.stalled = threading.Event()
        self.seed = seed
        self.fps = fps
        self.camera = default_camera(seed)
        k = self.camera.intrinsics
        self.hello = CameraHello(f"EMU{seed:08d}", k.width, k.height, k.fx, k.fy, k.ppx, k.ppy, fps)
        self.frames_sent = 0
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CameraEmulator:
        size = len(os.fsencode(self.path))
        if size > UNIX_PATH_MAX:
            raise ValueError(
                f"camera socket path {self.path} is {size} bytes; a Unix socket's "
                f"path may have at most {UNIX_PATH_MAX} (use a shorter folder, e.g. TMPDIR=/tmp)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, 0o600)
        server.listen(1)
        server.settimeout(0.2)
        self._server = server
        self._thread = threading.Thread(
            target=self._serve, name=f"camera-emulator:{self.path.name}", daemon=True
        )
        self._thread.start()
        log.info("camera emulator on %s at %g fps", self.path, self.fps)
        return self

    def _serve(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                try:
                    conn.sendall(self.hello.encode())
                    self._stream(conn)
                except OSError as e:  # the reader went away: wait for the next one
                    log.info("camera reader disconnected: %s", e)

    def _stream(self, conn: socket.socket) -> None:
        from sim.camera import render_camera

        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.stalled.is_set():  # nothing sent, the connection kept: the reader must time out
                next_t = time.monotonic()
                self._stop.wait(period)
                continue
            stamp_ms = time.time() * 1000.0  # when the pose is sampled: what the exposure time would be
            hand = self.occluder() if self.occluder is not None else None
            rgb, depth = render_camera(
                self.phantom, self.pose(), self.camera, self.frames_sent, self.seed, occluder=hand
            )
            conn.sendall(encode_frame(self.frames_sent, stamp_ms, rgb, depth))
            self.frames_sent += 1
            next_t = max(next_t + period, time.monotonic() - period)
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        if self._thread is not None:
            self._thread.join(3)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
