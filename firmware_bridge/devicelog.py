"""Per-device log prefixes: ``device_logger(__name__, "probe:ttyACM0")``.

The adapter adds a ``device`` field to every record; ``service.daemon.logsetup``'s formatters show it (a
``[probe:ttyACM0]`` prefix on a terminal, ``device=`` under journald). It lives here, below the
service, because the link and the emulator log through it too; it imports nothing of the project.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class DeviceAdapter(logging.LoggerAdapter):
    """Adds a ``device`` field (e.g. ``probe:ttyACM0``) to every record of one device's logger."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("device", self.extra["device"] if self.extra else "")
        kwargs["extra"] = extra
        return msg, kwargs


def device_logger(name: str, device: str) -> DeviceAdapter:
    """The logger for module ``name`` speaking about one device, e.g. ``device_logger(__name__, "probe:ACM0")``."""
    return DeviceAdapter(logging.getLogger(name), {"device": device})
