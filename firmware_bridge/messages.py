"""The message catalogue (docs/protocol.md): one table of payload layouts, encode and decode.

All integers are little-endian, ``f32`` is IEEE-754 binary32 little-endian, ``str`` is a u8 length
followed by that many UTF-8 bytes (at most 64), ``f32list`` is a u8 count followed by that many f32
(at most 32), ``bytes`` is the rest of the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.protocol import MAX_PAYLOAD, encode_frame


class MessageError(ValueError):
    """A payload that does not match its type's layout."""


# Message types.
HELLO = 0x01
IDENTIFY = 0x02
GET_PARAM = 0x10
SET_PARAM = 0x11
PARAM_VALUE = 0x12
NACK = 0x13
FREEZE = 0x14
FRAME_HEADER = 0x20
FRAME_CHUNK = 0x21
EVENT = 0x30
HEARTBEAT = 0x40
TIME_SYNC_REQ = 0x50
TIME_SYNC_RESP = 0x51
ERROR = 0x60

# Parameter ids and their API names.
PARAM_GAIN = 1
PARAM_DEPTH = 2
PARAM_FREQ = 3
PARAM_TGC = 4
PARAM_FROZEN = 5
PARAM_NAMES = {PARAM_GAIN: "gain_db", PARAM_DEPTH: "depth_mm", PARAM_FREQ: "freq_mhz", PARAM_TGC: "tgc_db"}
PARAM_NAMES[PARAM_FROZEN] = "frozen"
PARAM_IDS = {v: k for k, v in PARAM_NAMES.items()}

# Error codes (NACK and ERROR).
ERR_OUT_OF_RANGE = 1
ERR_BUSY = 2
ERR_FROZEN = 3
ERR_UNKNOWN_PARAM = 4
ERR_MALFORMED = 5
ERR_UNSUPPORTED = 6
ERR_INCOMPATIBLE_VERSION = 7
ERROR_NAMES = {
    ERR_OUT_OF_RANGE: "out of range",
    ERR_BUSY: "busy",
    ERR_FROZEN: "frozen",
    ERR_UNKNOWN_PARAM: "unknown parameter",
    ERR_MALFORMED: "malformed message",
    ERR_UNSUPPORTED: "unsupported message",
    ERR_INCOMPATIBLE_VERSION: "incompatible protocol version",
}

# Event codes.
EV_FREEZE_BUTTON = 1
EV_CAPTURE_BUTTON = 2
EV_CONTACT = 3
EV_OVER_TEMPERATURE = 4
EV_PARAM_CHANGED = 5
EV_TEMPERATURE_OK = 6
EVENT_NAMES = {
    EV_FREEZE_BUTTON: "freeze_button",
    EV_CAPTURE_BUTTON: "capture_button",
    EV_CONTACT: "contact",
    EV_OVER_TEMPERATURE: "over_temperature",
    EV_PARAM_CHANGED: "param_changed",
    EV_TEMPERATURE_OK: "temperature_ok",
}
SOURCE_DEVICE = 0  # the device changed something by itself
SOURCE_MANUAL = 1  # a person pressed a button on the probe
SOURCE_HOST = 2  # applied because the host asked

# Frame/heartbeat flag bits.
FLAG_FROZEN = 0x01
FLAG_CONTACT = 0x02
FLAG_OVER_TEMPERATURE = 0x04

MAX_STR = 64
MAX_LIST = 32

# type -> (name, [(field, kind)]). The single source for encode, decode, docs and the C layouts.
SCHEMAS: dict[int, tuple[str, list[tuple[str, str]]]] = {
    HELLO: ("HELLO", [("major", "u8"), ("minor", "u8"), ("max_payload", "u16")]),
    IDENTIFY: (
        "IDENTIFY",
        [
            ("major", "u8"),
            ("minor", "u8"),
            ("boot_id", "u32"),
            ("firmware", "str"),
            ("model", "str"),
            ("serial", "str"),
            ("gain_min", "f32"),
            ("gain_max", "f32"),
            ("gain_step", "f32"),
            ("depths_mm", "f32list"),
            ("freqs_mhz", "f32list"),
            ("tgc_bands", "u8"),
            ("tgc_min", "f32"),
            ("tgc_max", "f32"),
            ("tgc_step", "f32"),
            ("width", "u16"),
            ("height", "u16"),
            ("fps", "f32"),
            ("max_payload", "u16"),
        ],
    ),
    GET_PARAM: ("GET_PARAM", [("req", "u16"), ("param", "u8"), ("index", "u8")]),
    SET_PARAM: ("SET_PARAM", [("req", "u16"), ("param", "u8"), ("index", "u8"), ("value", "f32")]),
    PARAM_VALUE: ("PARAM_VALUE", [("req", "u16"), ("param", "u8"), ("index", "u8"), ("value", "f32")]),
    NACK: ("NACK", [("req", "u16"), ("param", "u8"), ("index", "u8"), ("error", "u8")]),
    FREEZE: ("FREEZE", [("req", "u16"), ("frozen", "u8")]),
    FRAME_HEADER: (
        "FRAME_HEADER",
        [
            ("frame_id", "u32"),
            ("device_ts_us", "u64"),
            ("width", "u16"),
            ("height", "u16"),
            ("chunk_count", "u16"),
            ("flags", "u8"),
            ("gain_db", "f32"),
            ("depth_mm", "f32"),
            ("freq_mhz", "f32"),
            ("tgc_db", "f32list"),
        ],
    ),
    FRAME_CHUNK: (
        "FRAME_CHUNK",
        [("frame_id", "u32"), ("chunk_index", "u16"), ("chunk_count", "u16"), ("data", "bytes")],
    ),
    EVENT: (
        "EVENT",
        [
            ("event_id", "u16"),
            ("code", "u8"),
            ("source", "u8"),
            ("device_ts_us", "u64"),
            ("param", "u8"),
            ("index", "u8"),
            ("value", "f32"),
        ],
    ),
    HEARTBEAT: (
        "HEARTBEAT",
        [
            ("device_ts_us", "u64"),
            ("boot_id", "u32"),
            ("temperature_c", "f32"),
            ("battery_pct", "u8"),
            ("flags", "u8"),
            ("rx_ok", "u32"),
            ("rx_crc_errors", "u32"),
            ("rx_discarded_bytes", "u32"),
            ("tx_messages", "u32"),
            ("frames_sent", "u32"),
        ],
    ),
    TIME_SYNC_REQ: ("TIME_SYNC_REQ", [("req", "u16"), ("host_ts_us", "u64")]),
    TIME_SYNC_RESP: ("TIME_SYNC_RESP", [("req", "u16"), ("host_ts_us", "u64"), ("device_ts_us", "u64")]),
    ERROR: ("ERROR", [("code", "u8"), ("ref_type", "u8"), ("ref_seq", "u16"), ("text", "str")]),
}
TYPE_BY_NAME = {name: t for t, (name, _) in SCHEMAS.items()}

_FIXED = {"u8": struct.Struct("<B"), "u16": struct.Struct("<H"), "u32": struct.Struct("<I")}
_FIXED.update({"u64": struct.Struct("<Q"), "f32": struct.Struct("<f")})
_CHUNK_HEAD = struct.Struct("<IHH")


@dataclass
class Message:
    type: int
    fields: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    @property
    def name(self) -> str:
        return SCHEMAS[self.type][0] if self.type in SCHEMAS else f"0x{self.type:02X}"

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def encode_payload(msg_type: int, fields: dict[str, Any]) -> bytes:
    if msg_type not in SCHEMAS:
        raise MessageError(f"unknown message type 0x{msg_type:02X}")
    name, layout = SCHEMAS[msg_type]
    parts: list[bytes] = []
    for fname, kind in layout:
        if fname not in fields:
            raise MessageError(f"{name}: missing field {fname!r}")
        value = fields[fname]
        try:
            if kind in _FIXED:
                parts.append(_FIXED[kind].pack(float(value) if kind == "f32" else int(value)))
            elif kind == "str":
                raw = str(value).encode("utf-8")
                if len(raw) > MAX_STR:
                    raise MessageError(f"{name}.{fname}: string longer than {MAX_STR} bytes")
                parts.append(bytes([len(raw)]) + raw)
            elif kind == "f32list":
                values = list(value)
                if len(values) > MAX_LIST:
                    raise MessageError(f"{name}.{fname}: more than {MAX_LIST} values")
                parts.append(struct.pack(f"<B{len(values)}f", len(values), *values))
            else:  # bytes: the rest of the payload
                parts.append(bytes(value))
        except struct.error as exc:
            raise MessageError(f"{name}.{fname}={value!r}: {exc}") from exc
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"{name}: payload {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return payload


def decode_payload(msg_type: int, payload: bytes | memoryview) -> dict[str, Any]:
    """Fields of one payload; raises MessageError (never anything else) when it does not fit."""
    if msg_type not in SCHEMAS:
        raise MessageError(f"unknown message type 0x{msg_type:02X}")
    name, layout = SCHEMAS[msg_type]
    out: dict[str, Any] = {}
    pos = 0
    n = len(payload)
    try:
        for fname, kind in layout:
            if kind in _FIXED:
                st = _FIXED[kind]
                (out[fname],) = st.unpack_from(payload, pos)
                pos += st.size
            elif kind == "str":
                length = payload[pos]
                if pos + 1 + length > n:
                    raise MessageError(f"{name}.{fname}: string runs past the payload")
                out[fname] = bytes(payload[pos + 1 : pos + 1 + length]).decode("utf-8", errors="replace")
                pos += 1 + length
            elif kind == "f32list":
                count = payload[pos]
                if count > MAX_LIST or pos + 1 + 4 * count > n:
                    raise MessageError(f"{name}.{fname}: bad list of {count} values")
                out[fname] = list(struct.unpack_from(f"<{count}f", payload, pos + 1))
                pos += 1 + 4 * count
            else:
                out[fname] = bytes(payload[pos:])
                pos = n
    except (struct.error, IndexError) as exc:
        raise MessageError(f"{name}: payload of {n} bytes too short ({exc})") from exc
    if pos != n:
        raise MessageError(f"{name}: {n - pos} unexpected trailing bytes")
    return out


def encode_message(msg_type: int, seq: int, **fields: Any) -> bytes:
    """A complete wire frame for one message."""
    return encode_frame(msg_type, seq, encode_payload(msg_type, fields))


def encode_chunk(seq: int, frame_id: int, index: int, count: int, data: bytes | memoryview) -> bytes:
    """FRAME_CHUNK without going through the generic table (the hot path)."""
    return encode_frame(FRAME_CHUNK, seq, _CHUNK_HEAD.pack(frame_id, index, count) + bytes(data))


def decode_chunk_head(payload: bytes) -> tuple[int, int, int]:
    if len(payload) < _CHUNK_HEAD.size:
        raise MessageError("FRAME_CHUNK: payload shorter than its 8-byte head")
    return _CHUNK_HEAD.unpack_from(payload, 0)
