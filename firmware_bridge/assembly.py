"""Reassembly of chunked frames, with loss detection and a bound on what is held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware_bridge import messages as m
from firmware_bridge.protocol import CHUNK_DATA_MAX

MAX_PENDING = 2  # frames being assembled at once; an older incomplete one is given up as lost
MAX_IMAGE_BYTES = 1024 * 1024  # refuse headers announcing absurd images (a corrupted but CRC-valid header)


@dataclass(frozen=True)
class ProbeFrame:
    frame_id: int
    device_ts_us: int
    host_time: float  # host clock when the last chunk arrived
    image: np.ndarray  # uint8 (height, width)
    params: dict[str, Any]  # gain_db, depth_mm, freq_mhz, tgc_db, frozen, contact


@dataclass
class _Partial:
    header: dict[str, Any]
    started: float
    buf: bytearray
    missing: set[int]


@dataclass
class AssemblyStats:
    frames_ok: int = 0
    frames_lost: int = 0  # never delivered: skipped frame ids plus incomplete frames
    frames_incomplete: int = 0  # of which: header seen, chunks missing (timeout or overtaken)
    chunks_rejected: int = 0  # chunk for no known frame, or not fitting its frame
    headers_rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FrameAssembler:
    timeout_s: float = 0.5
    stats: AssemblyStats = field(default_factory=AssemblyStats)
    _pending: dict[int, _Partial] = field(default_factory=dict)
    _expected: int | None = None

    def reset(self) -> None:
        """After a reconnect or device reboot: frame ids start over."""
        self._pending.clear()
        self._expected = None

    def header(self, h: dict[str, Any], now: float) -> None:
        fid, w, hgt, count = h["frame_id"], h["width"], h["height"], h["chunk_count"]
        size = w * hgt
        if size <= 0 or size > MAX_IMAGE_BYTES or count != -(-size // CHUNK_DATA_MAX):
            self.stats.headers_rejected += 1
            return
        if self._expected is not None and 0 < fid - self._expected < 1 << 20:
            self.stats.frames_lost += fid - self._expected  # ids never seen at all
        self._expected = fid + 1
        while len(self._pending) >= MAX_PENDING:
            self._give_up(min(self._pending))
        self._pending[fid] = _Partial(h, now, bytearray(size), set(range(count)))

    def chunk(self, payload: bytes, now: float) -> ProbeFrame | None:
        try:
            fid, index, count = m.decode_chunk_head(payload)
        except m.MessageError:
            self.stats.chunks_rejected += 1
            return None
        part = self._pending.get(fid)
        data_len = len(payload) - 8
        offset = index * CHUNK_DATA_MAX
        if (
            part is None
            or count != part.header["chunk_count"]
            or index not in part.missing
            or offset + data_len > len(part.buf)
            or (index < count - 1 and data_len != CHUNK_DATA_MAX)
            or (index == count - 1 and offset + data_len != len(part.buf))
        ):
            self.stats.chunks_rejected += 1
            return None
        part.buf[offset : offset + data_len] = memoryview(payload)[8:]
        part.missing.discard(index)
        if part.missing:
            return None
        del self._pending[fid]
        h = part.header
        self.stats.frames_ok += 1
        image = np.frombuffer(part.buf, dtype=np.uint8).reshape(h["height"], h["width"])
        params = {
            "gain_db": h["gain_db"],
            "depth_mm": h["depth_mm"],
            "freq_mhz": h["freq_mhz"],
            "tgc_db": list(h["tgc_db"]),
            "frozen": bool(h["flags"] & m.FLAG_FROZEN),
            "contact": bool(h["flags"] & m.FLAG_CONTACT),
        }
        return ProbeFrame(fid, h["device_ts_us"], now, image, params)

    def expire(self, now: float) -> None:
        for fid in [f for f, p in self._pending.items() if now - p.started > self.timeout_s]:
            self._give_up(fid)

    def _give_up(self, fid: int) -> None:
        del self._pending[fid]
        self._count_incomplete()

    def _count_incomplete(self) -> None:
        self.stats.frames_incomplete += 1
        self.stats.frames_lost += 1
