"""The device end of a serial line for the emulator: a pseudo-terminal it creates, a path, or a given fd."""

from __future__ import annotations

import contextlib
import os
import tty


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class FdEndpoint:
    """An fd the caller owns (e.g. ``PtyPair.device_fd``). Cannot be re-created."""

    can_recreate = False

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.path = ""
        _set_nonblocking(fd)

    def close(self) -> None:
        pass

    def recreate(self) -> None:
        raise RuntimeError("a caller-owned fd cannot be re-created; use a PtyEndpoint")


class PathEndpoint(FdEndpoint):
    """A serial device node or the far end of a socat pair, opened raw."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        if os.isatty(fd):
            tty.setraw(fd)
        super().__init__(fd)
        self.path = path

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class PtyEndpoint:
    """A pseudo-terminal owned by the emulator; ``path`` is what the host opens.

    With ``link`` the emulator keeps a stable symlink to the current pty (like socat's ``link=``), so
    a host can find the device again after it is re-created (USB replug, see the disconnect fault).
    The terminal side stays open here: its raw settings survive hosts opening and closing it.
    """

    can_recreate = True

    def __init__(self, link: str | None = None) -> None:
        self.link = link
        self.fd = -1
        self._slave_fd = -1
        self.pty_path = ""
        self.recreate()

    @property
    def path(self) -> str:
        return self.link or self.pty_path

    def recreate(self) -> None:
        self.close()
        self.fd, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd)
        _set_nonblocking(self.fd)
        self.pty_path = os.ttyname(self._slave_fd)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.pty_path, tmp)
            os.replace(tmp, self.link)  # atomic: a host never sees the link missing

    def close(self) -> None:
        for fd in (self.fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._slave_fd = -1

    def remove_link(self) -> None:
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
