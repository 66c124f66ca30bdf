"""Wire framing of the probe protocol (docs/protocol.md): constants, encoder and a resyncing decoder.

A frame on the wire::

    off  size  field
    0    2     magic 0x53 0x47 ("SG")
    2    1     message type
    3    2     sequence number, u16 little-endian, per sender, wraps
    5    2     payload length N, u16 little-endian, N <= MAX_PAYLOAD
    7    1     header check: CRC-8/SMBUS of bytes 2 .. 6
    8    N     payload
    8+N  4     CRC-32/ISO-HDLC (zlib) of bytes 2 .. 8+N-1, u32 little-endian

The header check lets a receiver reject a false magic in garbage at once, instead of waiting for the
bogus length's worth of bytes. The decoder never raises on bad input: it resyncs to the next magic,
counting what it discarded.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"SG"
HEADER = struct.Struct("<2sBHHB")
HEADER_SIZE = HEADER.size  # 8
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE
CHUNK_DATA_MAX = 4096
CHUNK_HEADER_SIZE = 8
MAX_PAYLOAD = CHUNK_DATA_MAX + CHUNK_HEADER_SIZE  # 4104: the largest message is a full frame chunk
MAX_FRAME_BYTES = MAX_PAYLOAD + OVERHEAD

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

_CRC = struct.Struct("<I")


def _crc8_table() -> bytes:
    table = bytearray(256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table[i] = c
    return bytes(table)


_CRC8 = _crc8_table()


def crc8(data: bytes | bytearray | memoryview) -> int:
    """CRC-8/SMBUS: poly 0x07, init 0, not reflected, xorout 0; check("123456789") = 0xF4."""
    c = 0
    for b in data:
        c = _CRC8[c ^ b]
    return c


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC: poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF; check("123456789") = 0xCBF43926."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(msg_type: int, seq: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One complete wire frame. Raises ValueError for a payload above MAX_PAYLOAD."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD={MAX_PAYLOAD}")
    if not 0 <= msg_type <= 0xFF:
        raise ValueError(f"message type {msg_type} is not a byte")
    fields = struct.pack("<BHH", msg_type, seq & 0xFFFF, len(payload))
    head = MAGIC + fields + bytes([crc8(fields)])
    crc = zlib.crc32(payload, zlib.crc32(head[2:]))
    return b"".join((head, payload, _CRC.pack(crc & 0xFFFFFFFF)))


@dataclass(frozen=True)
class RawFrame:
    msg_type: int
    seq: int
    payload: bytes


@dataclass
class DecoderStats:
    messages_ok: int = 0
    crc_errors: int = 0
    header_errors: int = 0  # a magic whose header check fails (usually a false magic in garbage)
    oversize: int = 0  # headers announcing a payload above MAX_PAYLOAD
    discarded_bytes: int = 0  # bytes skipped while looking for the next valid frame
    seq_gaps: int = 0  # messages missing according to the sender's sequence numbers

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class FrameDecoder:
    """Stream decoder: feed it any bytes, get back whole frames whose CRC checks.

    Memory is bounded: the buffer never holds more than one maximal frame plus one read.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()
        self._last_seq: int | None = None

    def reset(self) -> None:
        """Forget partial input and the sequence history (after a reconnect)."""
        self._buf.clear()
        self._last_seq = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        buf = self._buf
        buf += data
        out: list[RawFrame] = []
        pos = 0
        n = len(buf)
        stats = self.stats
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a trailing first magic byte: it may be the start of the next frame.
                keep = 1 if n and buf[n - 1] == MAGIC[0] else 0
                stats.discarded_bytes += n - keep - pos
                pos = n - keep
                break
            stats.discarded_bytes += start - pos
            pos = start
            if n - pos < HEADER_SIZE:
                break
            _, msg_type, seq, length, check = HEADER.unpack_from(buf, pos)
            if crc8(memoryview(buf)[pos + 2 : pos + 7]) != check:
                stats.header_errors += 1
                stats.discarded_bytes += 1
                pos += 1
                continue
            if length > MAX_PAYLOAD:
                stats.oversize += 1
                stats.discarded_bytes += 1
                pos += 1
                continue
            end = pos + HEADER_SIZE + length
            if n < end + CRC_SIZE:
                break
            (crc,) = _CRC.unpack_from(buf, end)
            if zlib.crc32(memoryview(buf)[pos + 2 : end]) & 0xFFFFFFFF != crc:
                stats.crc_errors += 1
                stats.discarded_bytes += 1
                pos += 1
                continue
            out.append(RawFrame(msg_type, seq, bytes(buf[pos + HEADER_SIZE : end])))
            stats.messages_ok += 1
            if self._last_seq is not None:
                gap = (seq - self._last_seq - 1) & 0xFFFF
                if gap < 0x8000:  # a larger jump is a sender restart, not 32k lost messages
                    stats.seq_gaps += gap
            self._last_seq = seq
            pos = end + CRC_SIZE
        if pos:
            del buf[:pos]
        return out
