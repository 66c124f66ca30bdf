"""systemd integration: sd_notify READY / WATCHDOG / STATUS, without libsystemd.

READY=1 once the model is warmed up and the daemon's loops run; WATCHDOG=1 only while every loop
proves itself alive (each beats on every turn, frames or not: a stuck thread should be restarted by
systemd, not kept alive by a timer thread). A frozen, idle or absent probe is not a hang: it is a
state, reported in ``status`` and STATUS= (a one-line summary for ``systemctl status``); restarting
the daemon would not unfreeze the probe.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SdNotifier:
    """Datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace); no-op without it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)  # a full receiver queue must never stall the daemon
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and owned else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as e:  # systemd gone or socket full: never fatal for the daemon
            log.debug("sd_notify failed: %s", e)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class HealthMonitor:
    """Decides what to tell systemd; call :meth:`tick` periodically with the current state."""

    def __init__(self, notifier: SdNotifier, stall_s: float = 2.0) -> None:
        self.notifier = notifier
        self.stall_s = stall_s  # no frame for this long = not flowing
        self.ready_sent = False
        self._last_ping = -1e18
        self._last_status = ""

    def frames_flowing(self, last_frame_time: float | None, now: float) -> bool:
        return last_frame_time is not None and now - last_frame_time <= self.stall_s

    def tick(self, now: float, model_warm: bool, loops_alive: bool, status: str) -> list[str]:
        """Send what is due; returns the fields sent (for the log and the tests)."""
        sent: list[str] = []
        if not self.ready_sent and model_warm and loops_alive:
            self.ready_sent = True
            sent.append("READY=1")
        interval = self.notifier.watchdog_interval_s
        if self.ready_sent and loops_alive and interval is not None and now - self._last_ping >= interval / 2:
            self._last_ping = now
            sent.append("WATCHDOG=1")
        if status != self._last_status:
            self._last_status = status
            sent.append(f"STATUS={status}")
        if sent:
            self.notifier.notify(*sent)
        return sent

    def stopping(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
