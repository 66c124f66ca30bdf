"""Raw captures of what a device sent (``probe record``) and their offline decoding (``probe replay``).

File layout: the 8-byte magic ``SGREC1\\n\\0``, then blocks of ``f64 host_time_s, u32 length, bytes``
(little-endian), one block per read from the line, exactly as received (garbage included).
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from firmware_bridge import messages as m
from firmware_bridge.assembly import FrameAssembler
from firmware_bridge.protocol import FrameDecoder

REC_MAGIC = b"SGREC1\n\0"
_BLOCK = struct.Struct("<dI")
MAX_BLOCK = 1 << 20


class RecordingError(ValueError):
    pass


class Recorder:
    def __init__(self, path: str | Path) -> None:
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(REC_MAGIC)
        self.bytes = 0

    def write(self, host_time: float, data: bytes) -> None:
        self._file.write(_BLOCK.pack(host_time, len(data)) + data)
        self.bytes += len(data)

    def close(self) -> None:
        self._file.close()


def read_blocks(path: str | Path) -> Iterator[tuple[float, bytes]]:
    with open(path, "rb") as f:
        if f.read(len(REC_MAGIC)) != REC_MAGIC:
            raise RecordingError(
                f"{path}: not a probe recording (bad magic; expected one made by `probe record`)"
            )
        while head := f.read(_BLOCK.size):
            if len(head) < _BLOCK.size:
                raise RecordingError(f"{path}: truncated block header at the end")
            t, n = _BLOCK.unpack(head)
            if n > MAX_BLOCK:
                raise RecordingError(f"{path}: block of {n} bytes is larger than {MAX_BLOCK}; file corrupt")
            data = f.read(n)
            if len(data) < n:
                raise RecordingError(f"{path}: truncated block at the end ({len(data)} of {n} bytes)")
            yield t, data


def replay(path: str | Path, messages: list[str] | None = None) -> dict[str, Any]:
    """Decode a recording as the link would; optionally list non-chunk messages as text lines."""
    decoder = FrameDecoder()
    assembler = FrameAssembler(timeout_s=1e9)
    counts: collections.Counter[str] = collections.Counter()
    malformed = 0
    t_first = t_last = None
    for t, data in read_blocks(path):
        t_first = t if t_first is None else t_first
        t_last = t
        for raw in decoder.feed(data):
            name = m.SCHEMAS[raw.msg_type][0] if raw.msg_type in m.SCHEMAS else f"0x{raw.msg_type:02X}"
            counts[name] += 1
            if raw.msg_type == m.FRAME_CHUNK:
                assembler.chunk(raw.payload, t)
                continue
            try:
                fields = m.decode_payload(raw.msg_type, raw.payload)
            except m.MessageError:
                malformed += 1
                continue
            if raw.msg_type == m.FRAME_HEADER:
                assembler.header(fields, t)
            if messages is not None:
                messages.append(f"{t:.6f} {name} seq={raw.seq} {fields}")
    return {
        "duration_s": 0.0 if t_first is None or t_last is None else round(t_last - t_first, 3),
        "messages": dict(counts),
        "frames": assembler.stats.frames_ok,
        "frames_lost": assembler.stats.frames_lost,
        "malformed": malformed,
        **{k: v for k, v in decoder.stats.as_dict().items()},
    }
