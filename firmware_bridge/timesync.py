"""Mapping device timestamps (µs since device boot) to host clock seconds, NTP style.

Each exchange gives host send time t0, host receive time t1 and the device time d read in between;
assuming a symmetric link, d corresponds to (t0 + t1) / 2 with an error of at most (t1 - t0) / 2.
The estimate uses the exchange with the smallest round trip among the recent ones.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class SyncSample:
    host_send: float
    host_receive: float
    device_us: int

    @property
    def rtt(self) -> float:
        return self.host_receive - self.host_send

    @property
    def offset(self) -> float:
        """host time - device time, in seconds."""
        return (self.host_send + self.host_receive) / 2.0 - self.device_us / 1e6


class TimeSync:
    def __init__(self, window: int = 16) -> None:
        self._samples: collections.deque[SyncSample] = collections.deque(maxlen=window)

    def reset(self) -> None:
        """The device rebooted: its clock restarted, old samples mean nothing."""
        self._samples.clear()

    def add(self, sample: SyncSample) -> None:
        if sample.rtt >= 0:
            self._samples.append(sample)

    @property
    def best(self) -> SyncSample | None:
        return min(self._samples, key=lambda s: s.rtt) if self._samples else None

    @property
    def synced(self) -> bool:
        return bool(self._samples)

    def to_host(self, device_us: int) -> float:
        best = self.best
        if best is None:
            raise ValueError("no time sync with the device yet")
        return device_us / 1e6 + best.offset
