"""What the service needs from the probe link (firmware_bridge.link.ProbeLink, docs/architecture.md).

Kept as a Protocol so the pipeline runs against the real link, the emulator behind it, or the
simulator; :func:`limits_from_info` reads the probe's capabilities from ``link.info`` tolerantly.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from service.control import ProbeLimits

# Parameter names as the link spells them; the MQTT API uses the same names.
GAIN, DEPTH, FREQUENCY = "gain_db", "depth_mm", "frequency_mhz"
TUNABLE = (GAIN, DEPTH, FREQUENCY)


class ProbeFrameLike(Protocol):
    frame_id: int
    device_ts_us: int
    host_time: float
    image: np.ndarray  # uint8 (H, W)
    params: dict[str, Any]


class ProbeLinkLike(Protocol):
    info: Any

    def latest_frame(self, timeout: float = ...) -> Any:
        """The newest :class:`ProbeFrameLike`, or None after ``timeout`` seconds."""
        ...

    def set_param(self, name: str, value: Any) -> Any:
        """Set a parameter; returns the value read back from the device."""
        ...

    def get_param(self, name: str) -> Any: ...


def _first(obj: Any, *names: str) -> Any:
    for source in (obj, getattr(obj, "capabilities", None)):
        if source is None:
            continue
        for n in names:
            value = source.get(n) if isinstance(source, dict) else getattr(source, n, None)
            if value is not None:
                return value
    return None


def limits_from_info(info: Any) -> ProbeLimits:
    """The probe's gain range/step and depth steps from ``link.info`` (defaults where it says nothing)."""
    default = ProbeLimits()
    gain_range = _first(info, "gain_range_db", "gain_range")
    lo = _first(info, "gain_min_db")
    hi = _first(info, "gain_max_db")
    if gain_range is not None:
        lo, hi = gain_range
    step = _first(info, "gain_step_db", "gain_step")
    depths = _first(info, "depth_steps_mm", "depth_steps")
    return ProbeLimits(
        gain_min_db=float(lo if lo is not None else default.gain_min_db),
        gain_max_db=float(hi if hi is not None else default.gain_max_db),
        gain_step_db=float(step if step is not None else default.gain_step_db),
        depth_steps_mm=tuple(float(d) for d in depths) if depths else default.depth_steps_mm,
    )


def describe_info(info: Any) -> str:
    """One line for the status: serial and firmware version, when the link says."""
    serial = _first(info, "serial", "serial_number")
    firmware = _first(info, "firmware_version", "firmware")
    parts = [f"serial {serial}" if serial else "", f"firmware {firmware}" if firmware else ""]
    return ", ".join(p for p in parts if p) or "unknown probe"
