"""Errors of the probe link, each naming what went wrong in words a technician can act on."""

from __future__ import annotations

from firmware_bridge.messages import ERROR_NAMES


class ProbeError(RuntimeError):
    """The probe link failed (not connected, no answer, unexpected answer)."""


class ProbeTimeout(ProbeError):  # noqa: N818 - the names other packages use
    """The device did not answer a request within its timeout and retries."""


class ProbeIncompatible(ProbeError):  # noqa: N818 - the names other packages use
    """The device speaks a protocol major version this host does not."""


class ProbeNack(ProbeError):  # noqa: N818 - the names other packages use
    """The device refused a request; ``code`` is its error code (messages.ERR_*)."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        self.reason = ERROR_NAMES.get(code, f"error code {code}")
        super().__init__(f"device refused {what}: {self.reason} (code {code})")
