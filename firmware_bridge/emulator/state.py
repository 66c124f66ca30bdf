"""The emulated device's capabilities and parameter rules (pure functions, no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge import messages as m
from firmware_bridge.protocol import MAX_PAYLOAD, PROTOCOL_MAJOR, PROTOCOL_MINOR


@dataclass
class Capabilities:
    firmware: str = "1.0.0-emulator"
    model: str = "SG-EMU-C5"
    serial: str = "EMU0001"
    gain_min: float = 0.0
    gain_max: float = 90.0
    gain_step: float = 0.5
    depths_mm: list[float] = field(default_factory=lambda: [40.0, 60.0, 80.0, 100.0, 120.0, 160.0, 200.0])
    freqs_mhz: list[float] = field(default_factory=lambda: [2.5, 3.5, 5.0])
    tgc_bands: int = 4
    tgc_min: float = -12.0
    tgc_max: float = 12.0
    tgc_step: float = 1.0
    width: int = 256
    height: int = 256
    fps: float = 30.0

    def identify_fields(self, boot_id: int, major: int = PROTOCOL_MAJOR) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(major=major, minor=PROTOCOL_MINOR, boot_id=boot_id, max_payload=MAX_PAYLOAD)
        return out


@dataclass
class Params:
    gain_db: float = 50.0
    depth_mm: float = 100.0
    freq_mhz: float = 3.5
    tgc_db: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    frozen: bool = False

    def snapshot(self) -> dict[str, Any]:
        return {
            "gain_db": self.gain_db,
            "depth_mm": self.depth_mm,
            "freq_mhz": self.freq_mhz,
            "tgc_db": list(self.tgc_db),
            "frozen": self.frozen,
        }


def default_params(caps: Capabilities) -> Params:
    mid = caps.depths_mm[len(caps.depths_mm) // 2]
    return Params(
        gain_db=_snap(50.0, caps.gain_min, caps.gain_max, caps.gain_step),
        depth_mm=mid,
        freq_mhz=caps.freqs_mhz[len(caps.freqs_mhz) // 2],
        tgc_db=[0.0] * caps.tgc_bands,
    )


def _snap(value: float, lo: float, hi: float, step: float) -> float:
    return min(hi, max(lo, lo + round((value - lo) / step) * step))


def _in_list(value: float, allowed: list[float]) -> float | None:
    for a in allowed:
        if abs(a - value) <= 1e-3 * max(1.0, abs(a)):
            return a
    return None


def read_param(params: Params, caps: Capabilities, param: int, index: int) -> float | int:
    """The current value, or an error code (int, from messages.ERR_*) as the second kind of result."""
    if param == m.PARAM_GAIN:
        return float(params.gain_db)
    if param == m.PARAM_DEPTH:
        return float(params.depth_mm)
    if param == m.PARAM_FREQ:
        return float(params.freq_mhz)
    if param == m.PARAM_TGC:
        return float(params.tgc_db[index]) if 0 <= index < caps.tgc_bands else m.ERR_OUT_OF_RANGE
    if param == m.PARAM_FROZEN:
        return float(params.frozen)
    return m.ERR_UNKNOWN_PARAM


def apply_param(
    params: Params, caps: Capabilities, param: int, index: int, value: float, check_range: bool = True
) -> float | int:
    """Apply a set request in place. Returns the applied value (float) or an error code (int).

    Gain and TGC snap to their step inside the range; depth and frequency must be one of the listed
    values; a frozen device refuses every change except unfreezing.
    """
    if param not in m.PARAM_NAMES:
        return m.ERR_UNKNOWN_PARAM
    if not math.isfinite(value):
        return m.ERR_OUT_OF_RANGE
    if param == m.PARAM_FROZEN:
        params.frozen = value >= 0.5
        return float(params.frozen)
    if params.frozen:
        return m.ERR_FROZEN
    if param == m.PARAM_GAIN:
        if check_range and not caps.gain_min <= value <= caps.gain_max:
            return m.ERR_OUT_OF_RANGE
        params.gain_db = _snap(value, caps.gain_min, caps.gain_max, caps.gain_step) if check_range else value
        return params.gain_db
    if param == m.PARAM_TGC:
        if not 0 <= index < caps.tgc_bands:
            return m.ERR_OUT_OF_RANGE
        if check_range and not caps.tgc_min <= value <= caps.tgc_max:
            return m.ERR_OUT_OF_RANGE
        params.tgc_db[index] = (
            _snap(value, caps.tgc_min, caps.tgc_max, caps.tgc_step) if check_range else value
        )
        return params.tgc_db[index]
    allowed = caps.depths_mm if param == m.PARAM_DEPTH else caps.freqs_mhz
    match = _in_list(value, allowed)
    if match is None:
        if check_range:
            return m.ERR_OUT_OF_RANGE
        match = value
    if param == m.PARAM_DEPTH:
        params.depth_mm = match
    else:
        params.freq_mhz = match
    return match
