"""Hex test vectors for every message type, stored once in ``vectors.json`` for Python, C and the doc.

``python -m firmware_bridge.vectors`` regenerates the file (the tests check that it is up to date).
Float values are chosen exactly representable in binary32 so that every decoder must agree exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from firmware_bridge import messages as m
from firmware_bridge.protocol import encode_frame

VECTORS_PATH = Path(__file__).with_name("vectors.json")

EXAMPLES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("hello", m.HELLO, 0, {"major": 1, "minor": 0, "max_payload": 4104}),
    (
        "identify",
        m.IDENTIFY,
        0,
        {
            "major": 1,
            "minor": 0,
            "boot_id": 0x12345678,
            "firmware": "1.2.3",
            "model": "SG-C5",
            "serial": "EMU0001",
            "gain_min": 0.0,
            "gain_max": 90.0,
            "gain_step": 0.5,
            "depths_mm": [40.0, 60.0, 80.0, 100.0, 120.0, 160.0],
            "freqs_mhz": [2.5, 3.5, 5.0],
            "tgc_bands": 4,
            "tgc_min": -12.0,
            "tgc_max": 12.0,
            "tgc_step": 1.0,
            "width": 256,
            "height": 256,
            "fps": 30.0,
            "max_payload": 4104,
        },
    ),
    ("get_param", m.GET_PARAM, 1, {"req": 7, "param": m.PARAM_DEPTH, "index": 0}),
    ("set_param", m.SET_PARAM, 2, {"req": 8, "param": m.PARAM_GAIN, "index": 0, "value": 42.5}),
    ("set_param_tgc", m.SET_PARAM, 3, {"req": 9, "param": m.PARAM_TGC, "index": 2, "value": -3.0}),
    ("param_value", m.PARAM_VALUE, 5, {"req": 8, "param": m.PARAM_GAIN, "index": 0, "value": 42.5}),
    ("nack", m.NACK, 6, {"req": 10, "param": m.PARAM_GAIN, "index": 0, "error": m.ERR_OUT_OF_RANGE}),
    ("freeze", m.FREEZE, 4, {"req": 11, "frozen": 1}),
    (
        "frame_header",
        m.FRAME_HEADER,
        300,
        {
            "frame_id": 1000,
            "device_ts_us": 5_000_000_123,
            "width": 256,
            "height": 256,
            "chunk_count": 16,
            "flags": m.FLAG_CONTACT,
            "gain_db": 42.5,
            "depth_mm": 120.0,
            "freq_mhz": 3.5,
            "tgc_db": [0.0, 1.0, -2.0, 3.5],
        },
    ),
    (
        "frame_chunk",
        m.FRAME_CHUNK,
        301,
        {"frame_id": 1000, "chunk_index": 15, "chunk_count": 16, "data": bytes(range(16))},
    ),
    (
        "event_manual_gain",
        m.EVENT,
        302,
        {
            "event_id": 3,
            "code": m.EV_PARAM_CHANGED,
            "source": m.SOURCE_MANUAL,
            "device_ts_us": 123456789,
            "param": m.PARAM_GAIN,
            "index": 0,
            "value": 55.0,
        },
    ),
    (
        "event_freeze_button",
        m.EVENT,
        303,
        {
            "event_id": 4,
            "code": m.EV_FREEZE_BUTTON,
            "source": m.SOURCE_MANUAL,
            "device_ts_us": 123456999,
            "param": m.PARAM_FROZEN,
            "index": 0,
            "value": 1.0,
        },
    ),
    (
        "heartbeat",
        m.HEARTBEAT,
        65535,
        {
            "device_ts_us": 987654321,
            "boot_id": 0x12345678,
            "temperature_c": 36.5,
            "battery_pct": 87,
            "flags": m.FLAG_CONTACT,
            "rx_ok": 120,
            "rx_crc_errors": 2,
            "rx_discarded_bytes": 37,
            "tx_messages": 54321,
            "frames_sent": 3000,
        },
    ),
    ("time_sync_req", m.TIME_SYNC_REQ, 12, {"req": 13, "host_ts_us": 1_700_000_000_000_000}),
    (
        "time_sync_resp",
        m.TIME_SYNC_RESP,
        13,
        {"req": 13, "host_ts_us": 1_700_000_000_000_000, "device_ts_us": 42_000_000},
    ),
    (
        "error",
        m.ERROR,
        14,
        {"code": m.ERR_UNSUPPORTED, "ref_type": 0x7E, "ref_seq": 99, "text": "unsupported message 0x7E"},
    ),
]


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}


def build_vectors() -> dict[str, Any]:
    vectors: list[dict[str, Any]] = []
    for name, msg_type, seq, fields in EXAMPLES:
        frame = encode_frame(msg_type, seq, m.encode_payload(msg_type, fields))
        vectors.append(
            {
                "name": name,
                "type": msg_type,
                "type_name": m.SCHEMAS[msg_type][0],
                "seq": seq,
                "fields": _jsonable(fields),
                "hex": frame.hex(),
            }
        )
    # A stream with garbage, a corrupted frame and two good ones: every decoder must find the same two.
    good_a = bytes.fromhex(vectors[2]["hex"])
    good_b = bytes.fromhex(vectors[3]["hex"])
    corrupt = bytearray(good_b)
    corrupt[9] ^= 0xFF  # a payload byte: the header is fine, the CRC-32 is not
    # A false magic followed by a plausible header (length 300) whose check byte is wrong: rejected at
    # once, so the good frame right behind it is not held up.
    false_header = b"SG\x01\x00\x00\x2c\x01\x00"
    stream = b"\x00\xffSG\x01garbage" + bytes(corrupt) + false_header + good_a + b"S" + good_b
    return {
        "crc": {"variant": "CRC-32/ISO-HDLC", "check_input": "123456789", "check": "cbf43926"},
        "header_check": {"variant": "CRC-8/SMBUS", "check_input": "123456789", "check": "f4"},
        "messages": vectors,
        "streams": [
            {
                "name": "garbage_then_two_frames",
                "hex": stream.hex(),
                "frames": [vectors[2]["hex"], vectors[3]["hex"]],
                "crc_errors": 1,
                "header_errors": 2,
                "discarded_bytes": len(stream) - len(good_a) - len(good_b),
            }
        ],
    }


def load_vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text())


def main() -> int:
    VECTORS_PATH.write_text(json.dumps(build_vectors(), indent=1) + "\n")
    print(f"wrote {VECTORS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
