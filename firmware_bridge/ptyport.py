"""Pseudo-terminal pairs: the emulator holds the device end, the host opens the other like /dev/ttyACM0."""

from __future__ import annotations

import contextlib
import os
import select
import time
import tty


class PtyPair:
    """``device_fd`` is the master side (the probe); ``host_path`` is what pyserial opens."""

    def __init__(self) -> None:
        self.device_fd, self._host_fd = os.openpty()
        # Raw mode on the terminal side: no echo, no CR/LF translation, no line discipline on binary data.
        tty.setraw(self._host_fd)
        self.host_path = os.ttyname(self._host_fd)

    def write_device(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.device_fd, view)
            view = view[n:]

    def read_device(self, n: int, timeout: float = 1.0) -> bytes:
        """Read up to ``n`` bytes that the host wrote, waiting at most ``timeout`` seconds in all."""
        out = bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.device_fd], [], [], left)[0]:
                break
            try:
                out += os.read(self.device_fd, n - len(out))
            except OSError:  # EIO: the other side is closed
                break
        return bytes(out)

    def close(self) -> None:
        for fd in (self.device_fd, self._host_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
