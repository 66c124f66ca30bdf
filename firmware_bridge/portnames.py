"""Stable and unstable names for the probe's port, and why a configured one is missing.

A kernel name (``/dev/ttyACM0``) or a pseudo-terminal (``/dev/pts/3``) is handed out afresh when the
device comes back (a replug, the emulator restarted): the old name is gone, or another device holds
it. A stable name is a link re-pointed at each appearance: the udev rule's ``/dev/sonoguide-probe``
(``systemd/99-sonoguide.rules``) or the emulator's ``--link`` path.
"""

from __future__ import annotations

import os
import re

STABLE_NAME = "/dev/sonoguide-probe"
_RENUMBERED = re.compile(r"^/dev/(pts/\d+|ttyACM\d+|ttyUSB\d+)$")


def renumbered_name(port: str) -> bool:
    """True for a name the kernel hands out afresh when the device comes back."""
    return bool(_RENUMBERED.match(port))


def missing_port_reason(port: str) -> str:
    """ "" when ``port`` exists (or is a pyserial URL); otherwise why it is missing and what to use."""
    if "://" in port or os.path.exists(port):
        return ""
    if os.path.islink(port):
        target = os.readlink(port)
        return (
            f"{port} points to {target}: the link exists but its device is gone (it came back under "
            "another name, replugged or the emulator restarted, and nothing re-pointed the link)"
        )
    if port.startswith("/dev/pts/"):
        return (
            f"{port} no longer exists: a re-created pseudo-terminal (the emulator restarted or "
            "replugged) gets a new number; set [probe] port to a stable link path (the emulator's "
            "--link) instead of the pty itself"
        )
    if renumbered_name(port):
        return (
            f"{port} no longer exists: a replugged probe may come back under another number; set "
            f"[probe] port to the stable udev name {STABLE_NAME} (systemd/99-sonoguide.rules)"
        )
    return f"{port} does not exist"
