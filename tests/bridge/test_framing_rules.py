"""The decoder's counting rules from docs/protocol.md, one each: the payload bound (exactly
MAX_PAYLOAD is allowed, one more is ``oversize``), sequence gaps, the 16-bit wrap, a sender restart."""

from __future__ import annotations

import struct

import pytest

from firmware_bridge.protocol import MAGIC, MAX_PAYLOAD, FrameDecoder, crc8, encode_frame

PING = 0x01  # any type: the framing does not look at it


def stream(seqs: list[int]) -> bytes:
    return b"".join(encode_frame(PING, s, bytes([s & 0xFF])) for s in seqs)


def test_a_payload_of_exactly_max_payload_is_a_frame_one_more_is_oversize() -> None:
    dec = FrameDecoder()
    biggest = encode_frame(0x20, 7, bytes(range(256)) * (MAX_PAYLOAD // 256) + bytes(MAX_PAYLOAD % 256))
    (frame,) = dec.feed(biggest)
    assert len(frame.payload) == MAX_PAYLOAD and dec.stats.oversize == 0
    encode_frame(0x20, 0, bytes(MAX_PAYLOAD))  # the encoder allows exactly the bound too
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        encode_frame(0x20, 0, bytes(MAX_PAYLOAD + 1))


def test_a_header_announcing_more_than_max_payload_is_counted_and_skipped() -> None:
    fields = struct.pack("<BHH", 0x20, 3, MAX_PAYLOAD + 1)
    bad_header = MAGIC + fields + bytes([crc8(fields)])  # a correct header check: only the length is wrong
    after = encode_frame(PING, 4, b"next")
    dec = FrameDecoder()
    frames = dec.feed(bad_header + bytes(40) + after)
    assert dec.stats.oversize == 1 and dec.stats.header_errors == 0
    assert [(f.seq, f.payload) for f in frames] == [(4, b"next")]  # no wait for 4105 bogus bytes
    assert dec.stats.discarded_bytes == len(bad_header) + 40


@pytest.mark.parametrize(
    ("seqs", "gaps"),
    [
        ([0, 1, 2, 3], 0),
        ([0, 1, 2, 5], 2),  # 3 and 4 missing
        ([10, 12, 13, 20], 1 + 6),
        ([65533, 65534, 65535, 0, 1], 0),  # the 16-bit wrap is no gap
        ([65534, 1], 2),  # 65535 and 0 missing across the wrap
        ([1000, 1001, 0, 1, 2], 0),  # the sender restarted: its numbers began again, nothing lost
        ([1000, 1001, 5, 6], 0),  # a restart that lost its first few messages is still a restart
    ],
)
def test_sequence_gaps_count_missing_messages(seqs: list[int], gaps: int) -> None:
    dec = FrameDecoder()
    assert [f.seq for f in dec.feed(stream(seqs))] == seqs
    assert dec.stats.seq_gaps == gaps


def test_reset_forgets_the_sequence_history() -> None:
    dec = FrameDecoder()
    dec.feed(stream([100, 101]))
    dec.reset()  # a reconnect: the next number is no gap
    dec.feed(stream([500, 501]))
    assert dec.stats.seq_gaps == 0


def test_the_message_type_is_one_byte_and_the_payload_defaults_to_empty() -> None:
    assert encode_frame(0x00, 1)[2] == 0x00 and encode_frame(0xFF, 1)[2] == 0xFF
    for bad in (-1, 0x100):
        with pytest.raises(ValueError, match=f"message type {bad} is not a byte"):
            encode_frame(bad, 1)
    (frame,) = FrameDecoder().feed(encode_frame(0x02, 9))
    assert frame.payload == b"" and len(encode_frame(0x02, 9)) == 12  # header 8 + CRC 4


def test_a_bad_header_is_judged_as_soon_as_its_eight_bytes_are_in() -> None:
    fields = struct.pack("<BHH", 0x20, 3, 10)
    wrong_check = MAGIC + fields + bytes([crc8(fields) ^ 0xFF])
    dec = FrameDecoder()
    assert dec.feed(wrong_check) == [] and dec.stats.header_errors == 1
    fields = struct.pack("<BHH", 0x20, 3, MAX_PAYLOAD + 1)
    dec = FrameDecoder()
    assert dec.feed(MAGIC + fields + bytes([crc8(fields)])) == [] and dec.stats.oversize == 1


def test_every_bad_frame_is_counted_and_the_good_ones_after_it_come_out_of_the_same_read() -> None:
    good = [encode_frame(PING, s, bytes([s]) * 5) for s in range(4)]
    bad_crc = bytearray(encode_frame(PING, 50, b"hello"))
    bad_crc[-1] ^= 0xFF
    fields = struct.pack("<BHH", 0x20, 51, MAX_PAYLOAD + 7)
    oversize = MAGIC + fields + bytes([crc8(fields)])
    junk = b"\x00\x01junk"
    data = (
        junk + good[0] + bytes(bad_crc) + good[1] + oversize + good[2] + bytes(bad_crc) + oversize + good[3]
    )
    dec = FrameDecoder()
    frames = dec.feed(data)  # one read: everything intact in it comes out now
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    st = dec.stats
    assert (st.messages_ok, st.crc_errors, st.oversize, st.header_errors) == (4, 2, 2, 0)
    assert st.discarded_bytes == len(junk) + 2 * len(bad_crc) + 2 * len(oversize)
    assert st.as_dict() == {
        "messages_ok": 4, "crc_errors": 2, "header_errors": 0, "oversize": 2,
        "discarded_bytes": st.discarded_bytes, "seq_gaps": 0,
    }  # fmt: skip
    assert dec.buffered == 0


@pytest.mark.parametrize(("jump", "gaps"), [(0x7FFF, 0x7FFE), (0x8000, 0x7FFF), (0x8001, 0)])
def test_a_jump_below_32768_missing_messages_is_a_gap_beyond_it_a_restart(jump: int, gaps: int) -> None:
    dec = FrameDecoder()
    dec.feed(stream([100, (100 + jump) & 0xFFFF]))
    assert dec.stats.seq_gaps == gaps


def test_the_crc8_table_is_the_smbus_polynomial() -> None:
    from firmware_bridge.protocol import _crc8_table

    table = _crc8_table()  # built once at import; rebuilt here so a wrong table shows
    c = 0
    for b in b"123456789":
        c = table[c ^ b]
    assert c == 0xF4 and table[1] == 0x07 and len(table) == 256
