"""What the service needs from the probe link (firmware_bridge.link.ProbeLink, docs/architecture.md).

The seam itself, :class:`service.seams.ProbeLinkLike`, is a Protocol so the pipeline runs against the real link (to real firmware or the reference
emulator on a pty) or a simulated-time stand-in; :func:`limits_from_info` reads the probe's
capabilities as the link reports them in ``link.info.capabilities`` (firmware_bridge/linkparts.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.policy.autotune import ProbeLimits

# Parameter names as the link spells them (firmware_bridge.messages.PARAM_NAMES); the MQTT API uses
# the same names.
GAIN, DEPTH, FREQUENCY = "gain_db", "depth_mm", "freq_mhz"
TUNABLE = (GAIN, DEPTH, FREQUENCY)


def capabilities_of(info: Any) -> Mapping[str, Any]:
    """``info.capabilities`` (a DeviceInfo) or ``info["capabilities"]`` (a dict); empty when absent."""
    caps = info.get("capabilities") if isinstance(info, Mapping) else getattr(info, "capabilities", None)
    return caps if isinstance(caps, Mapping) else {}


def limits_from_info(info: Any) -> ProbeLimits:
    """Gain range/step, depth steps and frequencies from the probe's capabilities (IDENTIFY).

    The link reports ``gain_min``, ``gain_max``, ``gain_step`` (dB), ``depths_mm`` and ``freqs_mhz``;
    a capability the probe does not report keeps the :class:`ProbeLimits` default.
    """
    caps = capabilities_of(info)
    default = ProbeLimits()

    def number(key: str, fallback: float) -> float:
        value = caps.get(key)
        return float(value) if value is not None else fallback

    def steps(key: str, fallback: tuple[float, ...]) -> tuple[float, ...]:
        values = caps.get(key)
        return tuple(sorted(float(v) for v in values)) if values else fallback

    return ProbeLimits(
        gain_min_db=number("gain_min", default.gain_min_db),
        gain_max_db=number("gain_max", default.gain_max_db),
        gain_step_db=number("gain_step", default.gain_step_db),
        depth_steps_mm=steps("depths_mm", default.depth_steps_mm),
        freqs_mhz=steps("freqs_mhz", default.freqs_mhz),
    )


def describe_info(info: Any) -> str:
    """One line for the status: model, serial and firmware version, when the link says."""

    def field(name: str) -> Any:
        return info.get(name) if isinstance(info, Mapping) else getattr(info, name, None)

    model, serial, firmware = field("model"), field("serial"), field("firmware")
    parts = [
        str(model) if model else "",
        f"serial {serial}" if serial else "",
        f"firmware {firmware}" if firmware else "",
    ]
    return ", ".join(p for p in parts if p) or "unknown probe"
