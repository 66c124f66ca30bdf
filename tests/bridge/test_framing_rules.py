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
