"""Small parts of the host link: device description, pending requests, traffic ring, reply checks."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge import messages as m
from firmware_bridge.errors import ProbeError, ProbeNack


@dataclass(frozen=True)
class DeviceInfo:
    protocol: tuple[int, int]
    firmware: str
    model: str
    serial: str
    boot_id: int
    capabilities: dict[
        str, Any
    ]  # gain_min/max/step, depths_mm, freqs_mhz, tgc_bands/min/max/step, width, height, fps

    @classmethod
    def from_identify(cls, f: dict[str, Any]) -> DeviceInfo:
        skip = {"major", "minor", "firmware", "model", "serial", "boot_id"}
        return cls(
            (f["major"], f["minor"]),
            f["firmware"],
            f["model"],
            f["serial"],
            f["boot_id"],
            {k: v for k, v in f.items() if k not in skip},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": f"{self.protocol[0]}.{self.protocol[1]}",
            "firmware": self.firmware,
            "model": self.model,
            "serial": self.serial,
            "capabilities": self.capabilities,
        }


@dataclass
class Pending:
    done: threading.Event = field(default_factory=threading.Event)
    reply: m.Message | None = None


class TrafficRing:
    """Recent messages both ways and the last raw bytes received, dumped to the log on protocol errors."""

    def __init__(self, size: int = 32) -> None:
        self.messages: collections.deque[str] = collections.deque(maxlen=size)
        self.raw_tail = bytearray()

    def note(self, direction: str, msg_type: int, seq: int, length: int) -> None:
        name = m.SCHEMAS[msg_type][0] if msg_type in m.SCHEMAS else f"0x{msg_type:02X}"
        self.messages.append(f"{direction} {name} seq={seq} len={length}")

    def raw(self, data: bytes) -> None:
        self.raw_tail += data[-256:]
        del self.raw_tail[:-256]

    def dump(self) -> str:
        return (
            "recent traffic: " + "; ".join(self.messages) + f" | last rx bytes: {self.raw_tail[-64:].hex()}"
        )


def param_id(name: str) -> int:
    if name not in m.PARAM_IDS:
        raise ValueError(f"unknown parameter {name!r}; known: {', '.join(m.PARAM_IDS)}")
    return m.PARAM_IDS[name]


def param_reply(reply: m.Message, name: str, param: int, index: int) -> float:
    f = reply.fields
    if reply.type == m.NACK:
        raise ProbeNack(f["error"], f"{name}[{index}]" if param == m.PARAM_TGC else name)
    if reply.type != m.PARAM_VALUE or f["param"] != param or f["index"] != index:
        raise ProbeError(f"{name}: unexpected reply {reply.name} {f}")
    return float(f["value"])
