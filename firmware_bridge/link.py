"""The host side of the probe link: ``ProbeLink(url).start()`` (docs/architecture.md, docs/protocol.md).

Threads: a reader (decode, reassemble, dispatch) and a supervisor (heartbeat watch, reconnect with
backoff, periodic time sync). Frames are delivered latest-wins: one slot, never a growing queue.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from firmware_bridge import messages as m
from firmware_bridge.assembly import FrameAssembler, ProbeFrame
from firmware_bridge.devicelog import device_logger
from firmware_bridge.errors import ProbeError, ProbeIncompatible, ProbeNack, ProbeTimeout
from firmware_bridge.linkparts import DeviceInfo, Pending, TrafficRing, param_id, param_reply
from firmware_bridge.protocol import MAX_PAYLOAD, PROTOCOL_MAJOR, PROTOCOL_MINOR, FrameDecoder
from firmware_bridge.timesync import SyncSample, TimeSync

__all__ = [
    "DeviceInfo",
    "ProbeError",
    "ProbeFrame",
    "ProbeIncompatible",
    "ProbeLink",
    "ProbeNack",
    "ProbeTimeout",
]

HEARTBEAT_TIMEOUT_S = 0.75  # device sends every 0.2 s: loss is noticed within 1 s of the last one
TIME_SYNC_PERIOD_S = 2.0


class ProbeLink:
    def __init__(
        self,
        url: str,
        name: str = "probe",
        clock: Callable[[], float] = time.monotonic,
        baudrate: int = 921600,
        request_timeout: float = 0.3,
        retries: int = 3,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
        reconnect: bool = True,
        frame_timeout: float = 0.5,
    ) -> None:
        self.url = url
        self.name = name
        self.clock = clock
        self.baudrate = baudrate
        self.request_timeout = request_timeout
        self.retries = retries
        self.heartbeat_timeout = heartbeat_timeout
        self.auto_reconnect = reconnect
        self.log = device_logger(__name__, f"{name}:{os.path.basename(url.rstrip('/')) or url}")
        self.info: DeviceInfo | None = None
        self.status: dict[str, Any] = {}
        self.decoder = FrameDecoder()
        self.assembler = FrameAssembler(frame_timeout)
        self.timesync = TimeSync()
        self.traffic = TrafficRing()
        self._swapped: dict[str, Any] | None = None  # set by a handshake that met another probe
        self.counters: collections.Counter[str] = collections.Counter()
        self._port: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._seq = 0
        self._req_ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._identify = Pending()
        self._frame_cond = threading.Condition()
        self._latest: ProbeFrame | None = None
        self._delivered = 0  # frames put in the slot
        self._taken = 0  # the slot's frame number last handed out by latest_frame
        self._known: dict[tuple[str, int], float] = {}  # device parameters to restore after a reboot
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._message_taps: list[Callable[[m.Message], None]] = []
        self._raw_taps: list[Callable[[bytes], None]] = []
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._down_reason: str | None = None
        self._last_heartbeat = 0.0
        self._last_sync = 0.0
        self._last_dump = -1e9
        self._last_checks = 0.0
        self._threads: list[threading.Thread] = []

    # --- public API --------------------------------------------------------------------------------
    def start(self, wait_for_device: bool = False) -> ProbeLink:
        """Open, identify (refusing an incompatible major version) and sync time; then run.

        ``wait_for_device``: an absent or silent probe is not an error; the link keeps trying in the
        background (as after a loss) and ``connected`` says when it is there.
        """
        self._threads = [threading.Thread(target=self._reader, name=f"{self.name}-reader", daemon=True)]
        try:
            self._open()
            self._threads[0].start()
            self._handshake()
        except ProbeIncompatible:
            self.stop()
            raise
        except ProbeError as exc:
            if not wait_for_device:
                self.stop()
                raise
            self._close()
            if not self._threads[0].is_alive():
                self._threads[0].start()
            self._down_reason = f"waiting for the probe: {exc}"
            self.log.warning("%s; retrying in the background", self._down_reason)
        sup = threading.Thread(target=self._supervisor, name=f"{self.name}-supervisor", daemon=True)
        self._threads.append(sup)
        sup.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2)

    def __enter__(self) -> ProbeLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def latest_frame(self, timeout: float = 0.1) -> ProbeFrame | None:
        """The newest frame not yet returned by this method, waiting up to ``timeout``; else None."""
        with self._frame_cond:
            if not self._frame_cond.wait_for(lambda: self._delivered > self._taken, timeout):
                return None
            self._taken = self._delivered
            return self._latest

    def add_event_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Device events (buttons, contact, temperature, manual parameter changes) and link events."""
        self._listeners.append(callback)

    def add_message_tap(self, callback: Callable[[m.Message], None]) -> None:
        self._message_taps.append(callback)

    def add_raw_tap(self, callback: Callable[[bytes], None]) -> None:
        self._raw_taps.append(callback)

    def get_param(self, name: str, index: int = 0) -> float | bool:
        param = param_id(name)
        reply = self.request(m.GET_PARAM, param=param, index=index)
        value = param_reply(reply, name, param, index)
        return bool(value) if param == m.PARAM_FROZEN else value

    def set_param(self, name: str, value: float | bool, index: int = 0) -> float | bool:
        """Set, then read back: returns the confirmed value; raises ProbeNack when refused."""
        param = param_id(name)
        reply = self.request(m.SET_PARAM, param=param, index=index, value=float(value))
        applied = param_reply(reply, name, param, index)
        readback = param_reply(self.request(m.GET_PARAM, param=param, index=index), name, param, index)
        if readback != applied:
            raise ProbeError(f"{name}: device acknowledged {applied} but reads back {readback}")
        self._known[(name, index)] = readback
        return bool(readback) if param == m.PARAM_FROZEN else readback

    def freeze(self, frozen: bool = True) -> bool:
        reply = self.request(m.FREEZE, frozen=int(frozen))
        value = param_reply(reply, "frozen", m.PARAM_FROZEN, 0)
        self._known[("frozen", 0)] = value
        return bool(value)

    def device_to_host_time(self, ts_us: int) -> float:
        return self.timesync.to_host(ts_us)

    def sync_time(self, samples: int = 4) -> None:
        for _ in range(samples):
            t0 = self.clock()
            reply = self.request(m.TIME_SYNC_REQ, host_ts_us=int(t0 * 1e6) & (2**64 - 1))
            self.timesync.add(SyncSample(t0, self.clock(), reply["device_ts_us"]))
        self._last_sync = self.clock()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out.update(self.decoder.stats.as_dict())
        out.update(self.assembler.stats.as_dict())
        best = self.timesync.best
        out["time_sync_rtt_ms"] = None if best is None else round(best.rtt * 1000, 3)
        out["connected"] = self.connected
        out["device_status"] = dict(self.status)
        return out

    def request(self, msg_type: int, **fields: Any) -> m.Message:
        """Send a request carrying a fresh ``req`` id; retry with backoff; return the matching reply."""
        req = next(self._req_ids) & 0xFFFF or next(self._req_ids) & 0xFFFF
        pending = self._pending[req] = Pending()
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.counters["retries"] += 1
                    self._stopping.wait(0.02 * 2**attempt)
                try:
                    self.send(msg_type, req=req, **fields)
                except ProbeError:  # link down: give the supervisor a chance to bring it back
                    self._connected.wait(self.request_timeout)
                    continue
                if pending.done.wait(self.request_timeout) and pending.reply is not None:
                    return pending.reply
            self.counters["request_timeouts"] += 1
            raise ProbeTimeout(f"no answer to {m.SCHEMAS[msg_type][0]} after {self.retries + 1} tries")
        finally:
            self._pending.pop(req, None)

    def send(self, msg_type: int, **fields: Any) -> None:
        with self._write_lock:
            frame = m.encode_message(msg_type, self._seq, **fields)
            self.traffic.note("tx", msg_type, self._seq, len(frame))
            self._seq = (self._seq + 1) & 0xFFFF
            self.write_raw(frame, locked=True)

    def write_raw(self, data: bytes, locked: bool = False) -> None:
        """Bytes as they are (conformance uses it to send garbage)."""
        port = self._port
        if port is None:
            raise ProbeError(f"{self.url}: not connected")
        try:
            if locked:
                port.write(data)
            else:
                with self._write_lock:
                    port.write(data)
        except (OSError, serial.SerialException, TypeError) as exc:
            self._link_down(f"write failed: {exc}")
            raise ProbeError(f"{self.url}: write failed: {exc}") from exc

    # --- connection --------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            # exclusive (flock): a second opener (doctor, a terminal program) is refused instead of
            # taking the probe's bytes from us.
            port = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0.05, write_timeout=2, exclusive=True
            )
        except (OSError, serial.SerialException, ValueError) as exc:
            raise ProbeError(f"cannot open probe port {self.url}: {exc}") from exc
        self.decoder.reset()
        self._port = port

    def _close(self) -> None:
        port, self._port = self._port, None
        self._connected.clear()
        if port is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                port.close()

    def _handshake(self) -> None:
        self._identify = Pending()
        for _ in range(self.retries + 1):
            self.send(m.HELLO, major=PROTOCOL_MAJOR, minor=PROTOCOL_MINOR, max_payload=MAX_PAYLOAD)
            if self._identify.done.wait(self.request_timeout):
                break
        else:
            raise ProbeTimeout(f"{self.url}: the device did not identify itself (no answer to HELLO)")
        assert self._identify.reply is not None
        info = DeviceInfo.from_identify(self._identify.reply.fields)
        if info.protocol[0] != PROTOCOL_MAJOR:
            raise ProbeIncompatible(
                f"{self.url}: device {info.model} (serial {info.serial}, firmware {info.firmware}) speaks "
                f"protocol {info.protocol[0]}.{info.protocol[1]}; this host speaks {PROTOCOL_MAJOR}.x. "
                "Update the host software or the probe firmware so the major versions match."
            )
        if self.info is not None and info.boot_id != self.info.boot_id:
            self.assembler.reset()
        old = self.info
        if old is not None and (old.model, old.serial, old.capabilities) != (
            info.model,
            info.serial,
            info.capabilities,
        ):
            # Another probe on the same port: none of the old one's settings or limits apply to it.
            self._known.clear()
            self._swapped = {"old": old.as_dict(), "new": info.as_dict()}
        self.info = info
        self.timesync.reset()
        self._last_heartbeat = self.clock()
        self._down_reason = None
        self._connected.set()
        try:
            self.sync_time()
        except ProbeTimeout as exc:  # usable without it; frames then carry device time only
            self.log.warning("time sync failed: %s", exc)
            self._last_sync = self.clock()
        self.log.info(
            "connected: %s serial %s firmware %s protocol %d.%d",
            info.model,
            info.serial,
            info.firmware,
            *info.protocol,
        )

    def _link_down(self, reason: str) -> None:
        if self._down_reason is None and not self._stopping.is_set():
            self._down_reason = reason
            self._connected.clear()

    def _reconnect(self, reason: str) -> None:
        self.log.warning("link lost (%s); reconnecting", reason)
        if self.info is not None:  # never connected yet: nothing was lost
            self.counters["reconnects"] += 1
            self._emit({"type": "link_lost", "reason": reason})
        self._close()
        delay = 0.1
        while not self._stopping.is_set():
            try:
                self._open()
                self._handshake()
                restored = self._restore()
            except ProbeIncompatible as exc:
                self.log.error("%s", exc)
                self._close()
                return
            except ProbeError as exc:
                self.log.info("reconnect attempt failed: %s", exc)
                self._close()
                self._stopping.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            swapped, self._swapped = self._swapped, None
            if swapped is not None:
                self.log.warning("a different probe is connected: %s serial %s", swapped["new"]["model"],
                                 swapped["new"]["serial"])  # fmt: skip
                self._emit({"type": "probe_changed", **swapped})
            self.log.warning("link restored")
            # restored: what the device came back with and what we put back, so a listener that
            # watches the frames' settings knows neither value is a person's change.
            self._emit({"type": "link_restored", "restored": restored})
            return

    def _restore(self) -> list[dict[str, Any]]:
        """Put back the parameters the device had before it went away (it may have rebooted); the
        ones changed, as ``{"param", "index", "found", "value"}``."""
        restored: list[dict[str, Any]] = []
        for (name, index), value in sorted(self._known.items(), key=lambda kv: kv[0][0] == "frozen"):
            try:
                found = self.get_param(name, index)
                if found != value:
                    self.set_param(name, value, index)
                    restored.append({"param": name, "index": index, "found": found, "value": value})
            except ProbeNack as exc:
                self.log.warning("could not restore %s=%s: %s", name, value, exc)
        return restored

    def _supervisor(self) -> None:
        while not self._stopping.wait(0.05):
            now = self.clock()
            if self._down_reason is not None:
                if not self.auto_reconnect:
                    continue
                self._reconnect(self._down_reason)
            elif self._connected.is_set() and now - self._last_sync > TIME_SYNC_PERIOD_S:
                try:
                    self.sync_time(1)
                except ProbeError as exc:
                    self.log.info("time sync failed: %s", exc)
                    self._last_sync = now

    # --- reading -----------------------------------------------------------------------------------
    def _read(self, port: serial.Serial) -> bytes:
        fd = getattr(port, "fd", None)
        if isinstance(fd, int):  # fast path for ttys: one syscall for everything the kernel has
            # (select first: with VMIN=0 an empty read means "nothing yet", after select it means hang-up)
            if not select.select([fd], [], [], 0.05)[0]:
                return b""
            data = os.read(fd, 1 << 18)
            if not data:
                raise OSError("device closed the line (read returned nothing)")
            return data
        return bytes(port.read(max(1, port.in_waiting)))

    def _reader(self) -> None:
        while not self._stopping.is_set():
            port = self._port
            if port is None:
                self._stopping.wait(0.02)
                continue
            try:
                data = self._read(port)
            except (OSError, serial.SerialException, TypeError, ValueError) as exc:
                if port is self._port:
                    self._link_down(f"read failed: {exc}")
                self._stopping.wait(0.02)
                continue
            now = self.clock()
            if now - self._last_checks >= 0.02:  # not on every 4 KiB read: these scan state
                self._last_checks = now
                self.assembler.expire(now)
                self._watch_heartbeat(now)
            if not data:
                continue
            self.counters["bytes_rx"] += len(data)
            for tap in self._raw_taps:
                tap(data)
            self.traffic.raw(data)
            st = self.decoder.stats
            bad_before = st.crc_errors + st.header_errors + st.oversize
            for raw in self.decoder.feed(data):
                self._dispatch(raw.msg_type, raw.seq, raw.payload, now)
            bad = st.crc_errors + st.header_errors + st.oversize - bad_before
            if bad:
                self._protocol_error(f"{bad} bad frame(s) (CRC, header check or size); resynced")

    def _watch_heartbeat(self, now: float) -> None:
        """Here on the reader (which wakes every 50 ms) so a blocked request cannot delay it."""
        silent = now - self._last_heartbeat
        if self._connected.is_set() and silent > self.heartbeat_timeout:
            self.counters["heartbeat_losses"] += 1
            self._link_down(f"no heartbeat for {silent:.2f} s")
            self._emit({"type": "heartbeat_lost", "silent_s": round(silent, 3)})

    def _protocol_error(self, what: str) -> None:
        now = self.clock()
        if now - self._last_dump > 5.0:  # rate-limited: a noisy line must not flood the journal
            self._last_dump = now
            self.log.warning("protocol error: %s; %s", what, self.traffic.dump())

    def _dispatch(self, msg_type: int, seq: int, payload: bytes, now: float) -> None:
        if msg_type == m.FRAME_CHUNK:  # hot path: no generic decoding
            frame = self.assembler.chunk(payload, now)
            if frame is not None:
                with self._frame_cond:
                    self._latest = frame
                    self._delivered += 1
                    self._frame_cond.notify_all()
            return
        self.traffic.note("rx", msg_type, seq, len(payload))
        try:
            msg = m.Message(msg_type, m.decode_payload(msg_type, payload), seq)
        except m.MessageError as exc:
            self.counters["malformed"] += 1
            self._protocol_error(str(exc))
            return
        for tap in self._message_taps:
            tap(msg)
        f = msg.fields
        if msg_type == m.FRAME_HEADER:
            self.assembler.header(f, now)
        elif msg_type in (m.PARAM_VALUE, m.NACK, m.TIME_SYNC_RESP):
            pending = self._pending.get(f["req"])
            if pending is not None and not pending.done.is_set():
                pending.reply = msg
                pending.done.set()
        elif msg_type == m.HEARTBEAT:
            self._last_heartbeat = now
            self.status = {k: v for k, v in f.items() if k != "device_ts_us"}
            if self.info is not None and f["boot_id"] != self.info.boot_id and self._connected.is_set():
                self._link_down("device rebooted (new boot id)")
        elif msg_type == m.IDENTIFY:
            self._identify.reply = msg
            self._identify.done.set()
        elif msg_type == m.EVENT:
            self._on_event(f, now)
        elif msg_type == m.ERROR:
            self.counters["device_errors"] += 1
            self._protocol_error(f"device reports {m.ERROR_NAMES.get(f['code'], f['code'])}: {f['text']}")

    def _on_event(self, f: dict[str, Any], now: float) -> None:
        name = m.PARAM_NAMES.get(f["param"])
        event = {
            "type": m.EVENT_NAMES.get(f["code"], f"event_{f['code']}"),
            "source": {m.SOURCE_MANUAL: "manual", m.SOURCE_HOST: "host"}.get(f["source"], "device"),
            "device_ts_us": f["device_ts_us"],
            "host_time": now,
            "value": f["value"],
        }
        if f["code"] in (m.EV_PARAM_CHANGED, m.EV_FREEZE_BUTTON) and name:
            event.update(param=name, index=f["index"])
            self._known[(name, f["index"])] = f["value"]  # the person's choice is what we restore
        self._emit(event)

    def _emit(self, event: dict[str, Any]) -> None:
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:
                self.log.exception("event listener failed on %s", event.get("type"))
