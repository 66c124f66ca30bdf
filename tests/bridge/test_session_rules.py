"""Session rules of docs/protocol.md §3-4 on a real pty, one each:

- the device says nothing until HELLO (its first message ever is the IDENTIFY, sequence 0);
- a payload that does not fit its type gets ERROR(MALFORMED), an unknown type or one going the wrong
  way ERROR(UNSUPPORTED), each naming the offending type and sequence number (the reference emulator);
- NACK(BUSY) reaches the caller as ProbeNack with the code, and nothing is retried or applied;
- an unanswered request is resent with the same ``req`` up to 3 times, 40/80/160 ms after each
  timeout.

The last two need a device that is busy or deaf on purpose, so a small device speaking the real
framing (``ScriptedDevice``) plays the probe; the host side is the real ProbeLink.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from firmware_bridge import messages as m
from firmware_bridge.emulator import ProbeEmulator
from firmware_bridge.emulator.state import Capabilities
from firmware_bridge.errors import ProbeNack, ProbeTimeout
from firmware_bridge.link import ProbeLink
from firmware_bridge.protocol import FrameDecoder, RawFrame, encode_frame
from firmware_bridge.ptyport import PtyPair


def read_frames(pty: PtyPair, until, timeout: float = 5.0) -> list[RawFrame]:  # type: ignore[no-untyped-def]
    """Frames the device sent, read from the host end of the pty, until ``until(frames)`` holds."""
    fd = os.open(pty.host_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return _read_fd(fd, until, timeout)
    finally:
        os.close(fd)


def _read_fd(fd: int, until, timeout: float) -> list[RawFrame]:  # type: ignore[no-untyped-def]
    dec, frames = FrameDecoder(), []
    deadline = time.monotonic() + timeout
    while not until(frames):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {[(f.msg_type, f.seq) for f in frames]}"
        if select.select([fd], [], [], min(left, 0.1))[0]:
            frames += dec.feed(os.read(fd, 65536))
    return frames


@pytest.fixture
def emulator(pty_pair: PtyPair) -> Iterator[tuple[PtyPair, ProbeEmulator]]:
    emu = ProbeEmulator(pty_pair.device_fd).start()
    yield pty_pair, emu
    emu.stop()


def hello(seq: int = 0) -> bytes:
    return m.encode_message(m.HELLO, seq, major=1, minor=0, max_payload=4104)


def test_the_device_is_silent_until_hello_then_identifies_first(emulator) -> None:
    pty, emu = emulator
    fd = os.open(pty.host_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        booted = time.monotonic()
        # Three heartbeat periods without HELLO. Whatever the machine's speed, the proof is below:
        # anything sent now would spend sequence numbers before the IDENTIFY.
        while time.monotonic() - booted < 0.6:
            assert not select.select([fd], [], [], 0.05)[0] or os.read(fd, 4096) == b""
        os.write(fd, hello())
        frames = _read_fd(fd, lambda fs: any(f.msg_type == m.HEARTBEAT for f in fs), 5.0)
    finally:
        os.close(fd)
    assert (frames[0].msg_type, frames[0].seq) == (m.IDENTIFY, 0)  # the device's first message ever
    assert emu.streaming


@pytest.mark.parametrize(
    ("frame", "code", "ref_type"),
    [
        (encode_frame(m.SET_PARAM, 41, b"\x01\x00\x01"), m.ERR_MALFORMED, m.SET_PARAM),  # 3 of 8 bytes
        (encode_frame(m.GET_PARAM, 41, b"\x01\x00\x01\x00\x99"), m.ERR_MALFORMED, m.GET_PARAM),  # trailing
        (encode_frame(0x7E, 41, b"hi"), m.ERR_UNSUPPORTED, 0x7E),  # no such type
        (
            m.encode_message(m.PARAM_VALUE, 41, req=1, param=1, index=0, value=3.0),  # device-to-host only
            m.ERR_UNSUPPORTED,
            m.PARAM_VALUE,
        ),
    ],
    ids=["short", "trailing", "unknown-type", "wrong-direction"],
)
def test_the_device_answers_a_bad_message_with_an_error_naming_it(
    emulator, frame: bytes, code: int, ref_type: int
) -> None:
    pty, _ = emulator
    fd = os.open(pty.host_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(fd, hello() + frame)
        frames = _read_fd(fd, lambda fs: any(f.msg_type == m.ERROR for f in fs), 5.0)
    finally:
        os.close(fd)
    (error,) = [m.decode_payload(f.msg_type, f.payload) for f in frames if f.msg_type == m.ERROR]
    assert (error["code"], error["ref_type"], error["ref_seq"]) == (code, ref_type, 41)
    assert error["text"]


class ScriptedDevice:
    """A probe that identifies, beats and syncs time like the reference, but answers SET_PARAM with
    NACK(BUSY) and never answers GET_PARAM; it records when each host request arrived."""

    def __init__(self, pty: PtyPair) -> None:
        self.pty = pty
        self.caps = Capabilities()
        self.received: list[tuple[float, m.Message]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted-device", daemon=True)
        self._thread.start()

    def _send(self, msg_type: int, **fields) -> None:  # type: ignore[no-untyped-def]
        self.pty.write_device(m.encode_message(msg_type, self._seq, **fields))
        self._seq += 1

    def _serve(self) -> None:
        dec, streaming, last_beat = FrameDecoder(), False, 0.0
        while not self._stop.is_set():
            if streaming and time.monotonic() - last_beat >= 0.2:
                last_beat = time.monotonic()
                self._send(m.HEARTBEAT, device_ts_us=int(last_beat * 1e6), boot_id=7, temperature_c=30.0,
                           battery_pct=90, flags=1, rx_ok=0, rx_crc_errors=0, rx_discarded_bytes=0,
                           tx_messages=0, frames_sent=0)  # fmt: skip
            if not select.select([self.pty.device_fd], [], [], 0.02)[0]:
                continue
            try:
                data = os.read(self.pty.device_fd, 65536)
            except OSError:
                return
            for raw in dec.feed(data):
                msg = m.Message(raw.msg_type, m.decode_payload(raw.msg_type, raw.payload), raw.seq)
                self.received.append((time.monotonic(), msg))
                f = msg.fields
                if msg.type == m.HELLO:
                    self._send(m.IDENTIFY, **self.caps.identify_fields(7))
                    streaming = True
                elif msg.type == m.TIME_SYNC_REQ:
                    now_us = int(time.monotonic() * 1e6)
                    self._send(
                        m.TIME_SYNC_RESP, req=f["req"], host_ts_us=f["host_ts_us"], device_ts_us=now_us
                    )
                elif msg.type == m.SET_PARAM:
                    self._send(m.NACK, req=f["req"], param=f["param"], index=f["index"], error=m.ERR_BUSY)

    def of(self, msg_type: int) -> list[tuple[float, m.Message]]:
        return [(t, msg) for t, msg in list(self.received) if msg.type == msg_type]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def scripted(pty_pair: PtyPair) -> Iterator[tuple[ScriptedDevice, ProbeLink]]:
    device = ScriptedDevice(pty_pair)
    link = ProbeLink(pty_pair.host_path, name="scripted", request_timeout=0.1, retries=3).start()
    yield device, link
    link.stop()
    device.stop()


def test_busy_is_reported_with_its_code_and_not_retried(scripted) -> None:
    device, link = scripted
    with pytest.raises(ProbeNack) as caught:
        link.set_param("gain_db", 40.0)
    assert caught.value.code == m.ERR_BUSY and "busy" in str(caught.value)
    assert len(device.of(m.SET_PARAM)) == 1  # refused is an answer: no resend
    assert device.of(m.GET_PARAM) == []  # and no read-back of a value that was not applied


def test_an_unanswered_request_is_resent_with_the_same_req_after_a_growing_backoff(scripted) -> None:
    device, link = scripted
    with pytest.raises(ProbeTimeout, match="GET_PARAM after 4 tries"):
        link.get_param("depth_mm")
    sends = device.of(m.GET_PARAM)
    assert len(sends) == 4 and len({msg.fields["req"] for _, msg in sends}) == 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(sends)]
    for gap, backoff in zip(gaps, (0.04, 0.08, 0.16), strict=True):
        # lower bounds only: a loaded machine may be late, never early
        assert gap >= link.request_timeout + backoff - 0.01, (gaps, backoff)
    assert link.stats()["retries"] >= 3 and link.stats()["request_timeouts"] >= 1
