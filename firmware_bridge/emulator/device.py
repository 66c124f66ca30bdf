"""The reference probe emulator: the whole device side of docs/protocol.md, on one thread.

It stays silent after boot until a host says HELLO, then streams frames at the configured rate and a
heartbeat every 200 ms, answers requests, and reports button presses and contact changes as events.
Faults (corrupt bytes, dropped chunks, stall, reboot, disconnect, misbehaviours) are injected here.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import queue
import random
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge import messages as m
from firmware_bridge.devicelog import device_logger
from firmware_bridge.emulator.endpoints import FdEndpoint, PathEndpoint, PtyEndpoint
from firmware_bridge.emulator.images import ImageSource, PatternImageSource
from firmware_bridge.emulator.poses import PoseSource, ScriptedPath
from firmware_bridge.emulator.state import Capabilities, apply_param, default_params, read_param
from firmware_bridge.protocol import CHUNK_DATA_MAX, PROTOCOL_MAJOR, FrameDecoder

HEARTBEAT_INTERVAL_S = 0.2
OVER_TEMPERATURE_C = 43.0
TEMPERATURE_OK_C = 41.0
MISBEHAVIOURS = ("accept-out-of-range", "no-heartbeat", "skip-frame-ids", "no-time-sync", "wedge-on-garbage")


@dataclass
class Faults:
    corrupt_rate: float = 0.0  # probability per message sent, and per read received, of one flipped byte
    corrupt_byte_rate: float = 0.0  # probability of each byte, sent or received, being flipped (line noise)
    drop_chunk_rate: float = 0.0  # probability that a frame chunk is not sent (its sequence number is spent)
    stall_after_s: float | None = None
    stall_for_s: float = 2.0
    reboot_after_s: float | None = None
    reboot_for_s: float = 0.5
    disconnect_after_s: float | None = None  # close the pty; re-create it (same link) after disconnect_for_s
    disconnect_for_s: float = 1.0
    protocol_major: int = PROTOCOL_MAJOR
    misbehave: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name, rate in (
            ("corrupt_rate", self.corrupt_rate),
            ("corrupt_byte_rate", self.corrupt_byte_rate),
            ("drop_chunk_rate", self.drop_chunk_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {rate}")
        unknown = set(self.misbehave) - set(MISBEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown misbehaviour(s) {sorted(unknown)}; known: {', '.join(MISBEHAVIOURS)}")


class ProbeEmulator:
    """``ProbeEmulator(port)``: ``port`` is a pty master fd, a device path, or a :class:`PtyEndpoint`."""

    def __init__(
        self,
        port: int | str | PtyEndpoint | FdEndpoint,
        image_source: ImageSource | None = None,
        pose_source: PoseSource | None = None,
        caps: Capabilities | None = None,
        faults: Faults | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        initial_params: dict[str, float] | None = None,
    ) -> None:
        """``initial_params``: settings at power-on (and after a reboot) instead of the mid-range
        defaults, e.g. ``{"gain_db": 26, "depth_mm": 140}``; each must be valid for ``caps``."""
        if isinstance(port, int):
            self.endpoint: PtyEndpoint | FdEndpoint = FdEndpoint(port)
        elif isinstance(port, str):
            self.endpoint = PathEndpoint(port)
        else:
            self.endpoint = port
        self.caps = caps or Capabilities()
        self.initial_params = dict(initial_params or {})
        self.images: ImageSource = image_source or PatternImageSource(self.caps.width, self.caps.height, seed)
        self.poses: PoseSource = pose_source or ScriptedPath()
        self.faults = faults or Faults()
        self.clock = clock
        self._rng = random.Random(seed)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = device_logger(__name__, f"emulator:{os.path.basename(self.endpoint.path or 'fd')}")
        self.applied: collections.deque[tuple[str, int, float, str]] = collections.deque(maxlen=10000)
        self.boots = 0
        self.chunks_dropped = 0
        self.fault_log: list[tuple[float, str]] = []  # (clock time, what) of injected faults, for tests
        self.temperature_c = 33.0
        self._start_t = clock()
        self._boot()

    # --- life cycle -------------------------------------------------------------------------------
    def _boot(self) -> None:
        self.boots += 1
        self.boot_id = self._rng.getrandbits(32)
        self._boot_t = self.clock()
        self.params = default_params(self.caps)
        for name, value in self.initial_params.items():
            if name not in m.PARAM_IDS or name in ("tgc_db", "frozen"):
                raise ValueError(f"initial_params: {name!r} is not gain_db, depth_mm or freq_mhz")
            if isinstance(apply_param(self.params, self.caps, m.PARAM_IDS[name], 0, float(value)), int):
                raise ValueError(f"initial_params: {name} = {value} is not allowed by the capabilities")
        self.decoder = FrameDecoder()
        self._seq = 0
        self._frame_id = 0
        self._event_id = 0
        self._tx_messages = 0
        self._frames_sent = 0
        self._control: collections.deque[bytes] = collections.deque()
        self._bulk: collections.deque[bytes] = collections.deque()
        self._messages_per_frame = 1 + -(-self.caps.width * self.caps.height // CHUNK_DATA_MAX)
        self._wbuf = memoryview(b"")
        self.streaming = False  # silent until a compatible HELLO
        self._contact: bool | None = None
        self._over_temp = False
        now = self.clock()
        self._next_frame = now
        self._next_heartbeat = now

    def start(self) -> ProbeEmulator:
        self._thread = threading.Thread(target=self.serve, name="probe-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def device_ts_us(self) -> int:
        return int((self.clock() - self._boot_t) * 1e6) + 1_000_000

    # --- calls from other threads (buttons, temperature): run on the device thread -----------------
    def call(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)

    def manual_set(self, name: str, value: float, index: int = 0) -> None:
        """A person changed a parameter with the probe's buttons: apply it and tell the host."""

        def do() -> None:
            param = m.PARAM_IDS[name]
            result = apply_param(self.params, self.caps, param, index, value)
            if isinstance(result, float):
                self.applied.append((name, index, result, "manual"))
                self._event(m.EV_PARAM_CHANGED, m.SOURCE_MANUAL, param, index, result)

        self.call(do)

    def press_freeze(self) -> None:
        def do() -> None:
            self.params.frozen = not self.params.frozen
            self._event(m.EV_FREEZE_BUTTON, m.SOURCE_MANUAL, m.PARAM_FROZEN, 0, float(self.params.frozen))

        self.call(do)

    def inject_raw(self, data: bytes) -> None:
        """Put bytes on the line between two messages (line noise, a bootloader banner)."""
        self.call(lambda: self._control.append(bytes(data)))

    def press_capture(self) -> None:
        self.call(lambda: self._event(m.EV_CAPTURE_BUTTON, m.SOURCE_MANUAL, 0, 0, 0.0))

    def set_temperature(self, celsius: float) -> None:
        def do() -> None:
            self.temperature_c = celsius
            if not self._over_temp and celsius >= OVER_TEMPERATURE_C:
                self._over_temp = True
                self._event(m.EV_OVER_TEMPERATURE, m.SOURCE_DEVICE, 0, 0, celsius)
            elif self._over_temp and celsius <= TEMPERATURE_OK_C:
                self._over_temp = False
                self._event(m.EV_TEMPERATURE_OK, m.SOURCE_DEVICE, 0, 0, celsius)

        self.call(do)

    # --- sending -----------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq

    def _maybe_corrupt(self, frame: bytes) -> bytes:
        if self.faults.corrupt_rate and self._rng.random() < self.faults.corrupt_rate:
            b = bytearray(frame)
            b[self._rng.randrange(len(b))] ^= self._rng.randrange(1, 256)
            frame = bytes(b)
        return self._line_noise(frame)

    def _line_noise(self, data: bytes) -> bytes:
        """Flip each byte with probability ``corrupt_byte_rate`` (geometric gaps: cost per flip, not per byte)."""
        p = self.faults.corrupt_byte_rate
        if not p or not data:
            return data
        b = bytearray(data)
        i = -1
        while True:
            u = 1.0 - self._rng.random()  # (0, 1]
            i += 1 + (int(math.log(u) / math.log1p(-p)) if p < 1.0 else 0)
            if i >= len(b):
                return bytes(b)
            b[i] ^= self._rng.randrange(1, 256)

    def _send(self, msg_type: int, bulk: bool = False, **fields: Any) -> None:
        self._queue(m.encode_message(msg_type, self._next_seq(), **fields), bulk)

    def _queue(self, frame: bytes, bulk: bool) -> None:
        if not bulk and len(self._control) > 64:  # nobody reading: keep the newest control messages only
            self._control.popleft()
        (self._bulk if bulk else self._control).append(self._maybe_corrupt(frame))
        self._tx_messages += 1

    def _event(self, code: int, source: int, param: int, index: int, value: float) -> None:
        if not self.streaming:
            return
        self._event_id = (self._event_id + 1) & 0xFFFF
        self._send(
            m.EVENT,
            event_id=self._event_id,
            code=code,
            source=source,
            device_ts_us=self.device_ts_us(),
            param=param,
            index=index,
            value=value,
        )

    def _write_some(self, fd: int) -> None:
        while True:
            if not self._wbuf:
                if self._control:
                    self._wbuf = memoryview(self._control.popleft())
                elif self._bulk:
                    self._wbuf = memoryview(self._bulk.popleft())
                else:
                    return
            try:
                n = os.write(fd, self._wbuf)
            except BlockingIOError:
                return
            self._wbuf = self._wbuf[n:]

    # --- receiving ---------------------------------------------------------------------------------
    def _handle_bytes(self, data: bytes) -> None:
        data = self._maybe_corrupt(data) if data else data
        frames = self.decoder.feed(data)
        if "wedge-on-garbage" in self.faults.misbehave and self.decoder.stats.discarded_bytes:
            return  # a device whose parser never resyncs: deaf after the first garbage byte
        for raw in frames:
            try:
                fields = m.decode_payload(raw.msg_type, raw.payload)
            except m.MessageError as exc:
                known = raw.msg_type in m.SCHEMAS
                code = m.ERR_MALFORMED if known else m.ERR_UNSUPPORTED
                self._send(m.ERROR, code=code, ref_type=raw.msg_type, ref_seq=raw.seq, text=str(exc)[:64])
                continue
            self._handle(m.Message(raw.msg_type, fields, raw.seq))

    def _handle(self, msg: m.Message) -> None:
        f = msg.fields
        if msg.type == m.HELLO:
            major = self.faults.protocol_major
            self._send(m.IDENTIFY, **self.caps.identify_fields(self.boot_id, major))
            if f["major"] != major:
                text = f"host speaks {f['major']}.x, device {major}.x"
                self._send(
                    m.ERROR, code=m.ERR_INCOMPATIBLE_VERSION, ref_type=m.HELLO, ref_seq=msg.seq, text=text
                )
                self.streaming = False
            else:
                if not self.streaming:
                    self.log.info("host connected (protocol %d.%d)", f["major"], f["minor"])
                self.streaming = True
        elif msg.type == m.GET_PARAM:
            self._reply_param(
                f["req"], f["param"], f["index"], read_param(self.params, self.caps, f["param"], f["index"])
            )
        elif msg.type in (m.SET_PARAM, m.FREEZE):
            param, index = (f["param"], f["index"]) if msg.type == m.SET_PARAM else (m.PARAM_FROZEN, 0)
            value = f["value"] if msg.type == m.SET_PARAM else float(f["frozen"])
            check = "accept-out-of-range" not in self.faults.misbehave
            result = apply_param(self.params, self.caps, param, index, value, check_range=check)
            if isinstance(result, float):
                self.applied.append((m.PARAM_NAMES[param], index, result, "host"))
            self._reply_param(f["req"], param, index, result)
        elif msg.type == m.TIME_SYNC_REQ:
            if "no-time-sync" not in self.faults.misbehave:
                self._send(
                    m.TIME_SYNC_RESP,
                    req=f["req"],
                    host_ts_us=f["host_ts_us"],
                    device_ts_us=self.device_ts_us(),
                )
        else:
            text = f"{msg.name} is not a host-to-device message"
            self._send(m.ERROR, code=m.ERR_UNSUPPORTED, ref_type=msg.type, ref_seq=msg.seq, text=text)

    def _reply_param(self, req: int, param: int, index: int, result: float | int) -> None:
        if isinstance(result, float):
            self._send(m.PARAM_VALUE, req=req, param=param, index=index, value=result)
        else:
            self._send(m.NACK, req=req, param=param, index=index, error=result)

    # --- periodic output ---------------------------------------------------------------------------
    def _flags(self, contact: bool) -> int:
        flags = m.FLAG_FROZEN if self.params.frozen else 0
        flags |= m.FLAG_CONTACT if contact else 0
        return flags | (m.FLAG_OVER_TEMPERATURE if self._over_temp else 0)

    def _heartbeat(self) -> None:
        st = self.decoder.stats
        self._send(
            m.HEARTBEAT,
            device_ts_us=self.device_ts_us(),
            boot_id=self.boot_id,
            temperature_c=self.temperature_c,
            battery_pct=max(0, 100 - int((self.clock() - self._start_t) / 60)),
            flags=self._flags(bool(self._contact)),
            rx_ok=st.messages_ok & 0xFFFFFFFF,
            rx_crc_errors=st.crc_errors & 0xFFFFFFFF,
            rx_discarded_bytes=st.discarded_bytes & 0xFFFFFFFF,
            tx_messages=self._tx_messages & 0xFFFFFFFF,
            frames_sent=self._frames_sent & 0xFFFFFFFF,
        )

    def _frame(self) -> None:
        t = self.clock() - self._start_t
        pose = self.poses.pose_at(t)
        contact = pose.in_contact
        if contact != self._contact:
            if self._contact is not None:
                self._event(m.EV_CONTACT, m.SOURCE_DEVICE, 0, 0, float(contact))
            self._contact = contact
        if self.params.frozen:
            return
        params = self.params.snapshot()
        image = self.images.render(params, pose, t)
        data = memoryview(image.tobytes())
        count = max(1, -(-len(data) // CHUNK_DATA_MAX))
        fid = self._frame_id
        self._frame_id = (
            self._frame_id + (2 if "skip-frame-ids" in self.faults.misbehave else 1)
        ) & 0xFFFFFFFF
        self._send(
            m.FRAME_HEADER,
            bulk=True,
            frame_id=fid,
            device_ts_us=self.device_ts_us(),
            width=image.shape[1],
            height=image.shape[0],
            chunk_count=count,
            flags=self._flags(contact),
            gain_db=params["gain_db"],
            depth_mm=params["depth_mm"],
            freq_mhz=params["freq_mhz"],
            tgc_db=params["tgc_db"],
        )
        for i in range(count):
            frame = m.encode_chunk(
                self._next_seq(), fid, i, count, data[i * CHUNK_DATA_MAX : (i + 1) * CHUNK_DATA_MAX]
            )
            if self.faults.drop_chunk_rate and self._rng.random() < self.faults.drop_chunk_rate:
                self.chunks_dropped += 1
                continue
            self._queue(frame, bulk=True)
        self._frames_sent += 1

    # --- the loop ----------------------------------------------------------------------------------
    def _pause(self, seconds: float, why: str) -> None:
        """Go silent (stalled or rebooting): neither read nor write, as a hung device would."""
        self.log.warning("%s for %.1f s", why, seconds)
        self.fault_log.append((self.clock(), why))
        self._stop.wait(seconds)

    def _scheduled_faults(self, t: float) -> None:
        fl = self.faults
        if fl.stall_after_s is not None and t >= fl.stall_after_s:
            fl.stall_after_s = None
            self._pause(fl.stall_for_s, "stalling")
        if fl.reboot_after_s is not None and t >= fl.reboot_after_s:
            fl.reboot_after_s = None
            self._pause(fl.reboot_for_s, "rebooting")
            self._drain_input()
            self._boot()
        if fl.disconnect_after_s is not None and t >= fl.disconnect_after_s:
            fl.disconnect_after_s = None
            if not self.endpoint.can_recreate:
                raise RuntimeError("the disconnect fault needs an emulator-owned pty")
            self.endpoint.close()
            self._pause(fl.disconnect_for_s, "disconnected")
            self.endpoint.recreate()
            self.log.warning("reconnected as %s", self.endpoint.path)
            self._boot()

    def _drain_input(self) -> None:
        with contextlib.suppress(OSError):
            while select.select([self.endpoint.fd], [], [], 0)[0] and os.read(self.endpoint.fd, 65536):
                pass

    def serve(self) -> None:
        """Run until :meth:`stop` (or forever on the CLI's main thread)."""
        period = 1.0 / self.caps.fps
        while not self._stop.is_set():
            now = self.clock()
            while not self._calls.empty():
                self._calls.get_nowait()()
            self._scheduled_faults(now - self._start_t)
            fd = self.endpoint.fd
            wait = min(self._next_frame, self._next_heartbeat) - now if self.streaming else 0.05
            has_output = bool(self._wbuf or self._control or self._bulk)
            try:
                readable, writable, _ = select.select(
                    [fd], [fd] if has_output else [], [], max(0.0, min(wait, 0.05))
                )
                if readable:
                    data = os.read(fd, 65536)
                    self._handle_bytes(data)
                if writable:
                    self._write_some(fd)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:  # EIO: nobody has the terminal side open right now
                self.log.debug("endpoint: %s", exc)
                self._stop.wait(0.05)
            now = self.clock()
            if not self.streaming:
                continue
            if now >= self._next_heartbeat:
                if "no-heartbeat" not in self.faults.misbehave:
                    self._heartbeat()
                self._next_heartbeat = max(self._next_heartbeat + HEARTBEAT_INTERVAL_S, now)
            if now >= self._next_frame:
                # Back-pressure: a device cannot acquire faster than its link drains; skip, don't queue.
                # Double buffering: a new frame is taken while at most one frame's messages wait, so
                # one late read on the host does not cost a frame, a slow host still cannot pile up.
                if len(self._bulk) <= self._messages_per_frame:
                    self._frame()
                self._next_frame += period
                if self._next_frame < now - period:
                    self._next_frame = now + period
