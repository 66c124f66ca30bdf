"""Wire protocol: test vectors (Python and the C reference agree), decoder robustness (hypothesis)."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import messages as m
from firmware_bridge.protocol import MAX_FRAME_BYTES, MAX_PAYLOAD, FrameDecoder, crc8, crc32, encode_frame
from firmware_bridge.vectors import build_vectors, load_vectors

C_DIR = Path(__file__).resolve().parents[2] / "firmware_bridge" / "c"
VECTORS = load_vectors()


def _fields(v: dict[str, Any]) -> dict[str, Any]:
    layout = dict(m.SCHEMAS[v["type"]][1])
    return {k: bytes.fromhex(x) if layout[k] == "bytes" else x for k, x in v["fields"].items()}


def test_vector_file_is_up_to_date_and_covers_every_message_type() -> None:
    assert build_vectors() == VECTORS, "run `python -m firmware_bridge.vectors` and commit vectors.json"
    assert {v["type"] for v in VECTORS["messages"]} == set(m.SCHEMAS)


def test_crcs_are_the_named_variants() -> None:
    assert f"{crc32(b'123456789'):08x}" == VECTORS["crc"]["check"] == "cbf43926"
    assert f"{crc8(b'123456789'):02x}" == VECTORS["header_check"]["check"] == "f4"


@pytest.mark.parametrize("v", VECTORS["messages"], ids=lambda v: v["name"])
def test_python_encodes_and_decodes_each_vector(v: dict[str, Any]) -> None:
    fields = _fields(v)
    frame = encode_frame(v["type"], v["seq"], m.encode_payload(v["type"], fields))
    assert frame.hex() == v["hex"]
    (raw,) = FrameDecoder().feed(bytes.fromhex(v["hex"]))
    assert (raw.msg_type, raw.seq) == (v["type"], v["seq"])
    assert m.decode_payload(raw.msg_type, raw.payload) == fields


def test_stream_vector_resyncs_after_garbage_and_bad_crc() -> None:
    for s in VECTORS["streams"]:
        data = bytes.fromhex(s["hex"])
        dec = FrameDecoder()
        frames = []
        for i in range(0, len(data), 3):  # in small pieces, as a slow line delivers them
            frames += dec.feed(data[i : i + 3])
        assert [encode_frame(f.msg_type, f.seq, f.payload).hex() for f in frames] == s["frames"]
        assert dec.stats.crc_errors == s["crc_errors"]
        assert dec.stats.header_errors == s["header_errors"]
        assert dec.stats.discarded_bytes == s["discarded_bytes"]


@pytest.fixture(scope="module")
def c_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed for the reference implementation (apt-get install gcc)"
    out = tmp_path_factory.mktemp("c") / "sgtest"
    cmd = [gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(out)]
    built = subprocess.run(
        [*cmd, str(C_DIR / "sgproto.c"), str(C_DIR / "test_vectors.c")], capture_output=True, text=True
    )
    assert built.returncode == 0, f"the C reference does not compile cleanly:\n{built.stderr}"
    return out


def _run_c(binary: Path, lines: list[str]) -> list[dict[str, str]]:
    out = subprocess.run(
        [str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True
    )
    blocks, cur = [], {}
    for line in out.stdout.splitlines():
        if line == "--":
            blocks.append(cur)
            cur = {}
        elif line.startswith("frame "):
            cur.setdefault("frames", []).append(line[6:])  # type: ignore[attr-defined]
        elif line.startswith("crc "):
            cur["crc"] = line[4:]
        else:
            k, _, val = line.partition("=")
            cur[k] = val
    return blocks


def _same(expected: Any, got: str) -> bool:
    if isinstance(expected, bytes):
        return got == expected.hex()
    if isinstance(expected, list):
        return [float(x) for x in got.split(",") if x] == expected
    if isinstance(expected, float):
        return math.isclose(float(got), expected, rel_tol=0, abs_tol=0)
    return got == str(expected)


def test_c_reference_agrees_on_every_vector(c_checker: Path) -> None:
    msgs = VECTORS["messages"]
    blocks = _run_c(c_checker, [f"msg {v['hex']}" for v in msgs])
    assert len(blocks) == len(msgs)
    for v, got in zip(msgs, blocks, strict=False):
        assert got.get("reencode") == "ok", f"{v['name']}: C output {got}"
        assert got["type"] == str(v["type"]) and got["seq"] == str(v["seq"])
        for k, expected in _fields(v).items():
            assert _same(expected, got[k]), f"{v['name']}.{k}: C says {got[k]!r}, vector {expected!r}"


def test_c_reference_crc_and_stream_resync(c_checker: Path) -> None:
    s = VECTORS["streams"][0]
    crc_block, stream_block = _run_c(c_checker, ["crc 123456789", f"stream {s['hex']}"])
    assert crc_block["crc"] == VECTORS["crc"]["check"]
    assert crc_block["crc8"] == VECTORS["header_check"]["check"]
    assert int(stream_block["header_errors"]) == s["header_errors"]
    assert stream_block["frames"] == s["frames"]
    assert int(stream_block["crc_errors"]) == s["crc_errors"]
    assert int(stream_block["discarded_bytes"]) == s["discarded_bytes"]


def test_c_decoder_rejects_truncated_and_corrupt_payloads(c_checker: Path) -> None:
    v = next(v for v in VECTORS["messages"] if v["name"] == "identify")
    frame = bytes.fromhex(v["hex"])
    flipped = bytearray(frame)
    flipped[20] ^= 0x01  # in the payload
    short_payload = encode_frame(m.IDENTIFY, 1, m.encode_payload(m.IDENTIFY, _fields(v))[:-3])
    blocks = _run_c(c_checker, [f"msg {flipped.hex()}", f"msg {short_payload.hex()}"])
    assert blocks[0] == {"error": "no frame"}  # CRC caught the flipped bit
    assert blocks[1] == {"error": "decode -1"}  # framing fine, payload too short for IDENTIFY


def test_encoder_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        encode_frame(m.FRAME_CHUNK, 0, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(m.MessageError, match="missing field 'value'"):
        m.encode_payload(m.SET_PARAM, {"req": 1, "param": 1, "index": 0})
    with pytest.raises(m.MessageError, match="longer than 64"):
        m.encode_payload(m.ERROR, {"code": 1, "ref_type": 0, "ref_seq": 0, "text": "x" * 65})


def test_decode_payload_names_the_problem() -> None:
    with pytest.raises(m.MessageError, match="HEARTBEAT: payload of 3 bytes too short"):
        m.decode_payload(m.HEARTBEAT, b"abc")
    with pytest.raises(m.MessageError, match="trailing"):
        m.decode_payload(m.FREEZE, b"\x01\x00\x01\x99")
    with pytest.raises(m.MessageError, match="unknown message type 0x7F"):
        m.decode_payload(0x7F, b"")


valid_frames = st.sampled_from([bytes.fromhex(v["hex"]) for v in VECTORS["messages"]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), valid_frames), max_size=30), st.integers(1, 97))
def test_decoder_never_raises_is_bounded_and_finds_every_intact_frame(parts: list[bytes], piece: int) -> None:
    data = b"".join(parts)
    dec = FrameDecoder()
    found = []
    for i in range(0, len(data), piece):
        found += dec.feed(data[i : i + piece])
        assert dec.buffered <= MAX_FRAME_BYTES + piece  # never more than one frame plus one read
    for raw in found:  # whatever is found decodes or is rejected with MessageError only
        with contextlib.suppress(m.MessageError):
            m.decode_payload(raw.msg_type, raw.payload)
    found_hex = [encode_frame(f.msg_type, f.seq, f.payload) for f in found]
    intact = [p for p in parts if p in {bytes.fromhex(v["hex"]) for v in VECTORS["messages"]}]
    it = iter(found_hex)  # every intact frame we put in comes out, in order (garbage may add frames, rarely)
    assert all(any(f == p for f in it) for p in intact)
    consumed = len(data) - dec.buffered
    assert dec.stats.discarded_bytes + sum(len(f) for f in found_hex) == consumed


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_arbitrary_bytes_are_counted_not_trusted(junk: bytes) -> None:
    dec = FrameDecoder()
    frames = dec.feed(junk)
    for f in frames:  # a frame out of pure junk must at least carry a valid CRC
        assert f in FrameDecoder().feed(encode_frame(f.msg_type, f.seq, f.payload))
    assert dec.stats.discarded_bytes + dec.buffered + sum(len(f.payload) + 12 for f in frames) == len(junk)


def test_protocol_doc_carries_every_vector_and_the_crc_check_value() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert "0xCBF43926" in doc and "CRC-32/ISO-HDLC" in doc and "`0xF4`" in doc and "CRC-8/SMBUS" in doc
    for v in VECTORS["messages"]:
        assert v["hex"] in doc, f"docs/protocol.md lacks the {v['name']} vector"
        assert f"0x{v['type']:02X} {v['type_name']}" in doc
    assert VECTORS["streams"][0]["hex"] in doc
