"""The standing fault campaign (issue 16): the real daemon under faults and hostile input.

``sonoguide run`` as a child process (the benchmark's :class:`DaemonProcess`), a real mosquitto
(:class:`LocalBroker`), the reference emulator on a pty behind a stable link path (in this process,
so faults can be switched on and off while it runs, and so every write the daemon makes is counted
on the device side), and an MQTT observer. Each fault is injected in turn, with a ``ping`` every
0.25 s while it lasts, and reported as a :class:`FaultResult`:

- ``recovery_s``: from the end of the fault to guidance flowing again (10 messages, none > 0.2 s
  apart); None: it never came back within the deadline;
- ``gap_s``: the longest pause between two guidance messages around the fault;
- ``wrong_writes``: host writes the emulator applied outside its probe's capabilities (the emulator
  runs with ``accept-out-of-range``, so a wrong value would land: the device side counts it);
- ``false_manual``: ``manual_change`` events from the probe (nobody presses its buttons here);
- ``lost_replies``: requests with no reply within 5 s; ``lost_events``: gaps in the events' ``seq``
  not counted by the daemon in ``status.mqtt.events_dropped``;
- ``crashes``: the daemon gone (it is restarted to go on), ``internal error`` replies, tracebacks.

Camera loss (long only) gives the daemon the camera emulator as its camera (:class:`CameraRig`) and
reports each loss in ``detail`` (:class:`CameraLoss`); its recovery is the time back to tracked guidance.

``short`` (``make test``, ``tests/tools/test_fault_campaign.py``) runs a few faults briefly; ``long``
(``sonoguide faults``) all of them longer, with thousands of hypothesis-made commands. Figures are
reported, never asserted as timings.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_bridge.emulator.device import Faults, ProbeEmulator
from firmware_bridge.emulator.endpoints import PtyEndpoint
from firmware_bridge.emulator.state import Capabilities
from service.tools.benchmark.procs import DEVICE_ID, DaemonProcess, write_config
from service.tools.local_broker import LocalBroker

log = logging.getLogger(__name__)

ROOT = f"sonoguide/{DEVICE_ID}/"
REPLY_TIMEOUT_S = 5.0
RECOVERY_DEADLINE_S = 30.0
SHORT = ("corruption", "reboot", "command_flood", "fuzzed_commands")  # the broker: test_daemon
LONG = (
    "corruption", "dropped_chunks", "stall", "reboot", "unplug", "probe_swap", "broker_restart",
    "camera_loss", "freeze", "command_flood", "fuzzed_commands",
)  # fmt: skip
IMAGE_ONLY_BASIS = "assumed_marker_toward_head"  # guidance.basis without a tracked pose (docs/service.md)


@dataclass
class FaultResult:
    fault: str
    recovery_s: float | None
    gap_s: float
    wrong_writes: int = 0
    false_manual: int = 0
    lost_replies: int = 0
    lost_events: int = 0
    crashes: int = 0
    requests: int = 0
    note: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)  # fault-specific figures

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Observer:
    """One paho client on the device's topics and its own reply topic; requests with correlation."""

    def __init__(self, broker_port: int, name: str = "campaign") -> None:
        self.reply_topic = f"{ROOT}reply/{name}-{uuid.uuid4().hex[:6]}/r"
        self.guidance: list[float] = []
        self.guidance_basis: list[str] = []  # the ``basis`` of each message in ``guidance``
        self.statuses: list[tuple[float, dict[str, Any]]] = []  # (arrival, message), every one
        self.events: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}
        self.replies: dict[bytes, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe([(ROOT + "#", 1), (self.reply_topic, 1)])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("the campaign's observer could not subscribe")

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        name = msg.topic.removeprefix(ROOT)
        try:
            body: Any = json.loads(msg.payload) if name != "available" else msg.payload.decode()
        except ValueError:
            return
        with self._cond:
            if msg.topic == self.reply_topic:
                corr = getattr(msg.properties, "CorrelationData", b"")
                if "progress" not in body:
                    self.replies[corr] = body
            elif name == "guidance":
                self.guidance.append(now)
                self.guidance_basis.append(str(body.get("basis")))
            elif name == "events":
                self.events.append(body)
            elif name == "status":
                self.status = body
                self.statuses.append((now, body))
            self._cond.notify_all()

    def guided_since(self, t: float) -> list[tuple[float, str]]:
        """(arrival, basis) of the guidance messages that arrived at or after ``t``."""
        with self._cond:
            i = bisect.bisect_left(self.guidance, t)
            return list(zip(self.guidance[i:], self.guidance_basis[i:], strict=True))

    def first_tracked(self, t: float) -> float | None:
        """When the first guidance message at or after ``t`` guided from a tracked pose arrived."""
        return next((at for at, basis in self.guided_since(t) if basis != IMAGE_ONLY_BASIS), None)

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def send(self, command: str, body: Any = None, raw: bytes | None = None) -> bytes:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.client.publish(ROOT + "cmd/" + command, payload, qos=1, properties=props)
        return corr

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` (re-checked on each message and every 0.1 s) or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (done := predicate()) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        return bool(done)

    def request(self, command: str, body: Any = None) -> dict[str, Any] | None:
        corr = self.send(command, body)
        self.wait(lambda: corr in self.replies, REPLY_TIMEOUT_S)
        return self.replies.get(corr)

    def unanswered(self, sent: list[bytes]) -> list[bytes]:
        """Of ``sent``, those still without a reply after the reply timeout."""
        self.wait(lambda: all(c in self.replies for c in sent), REPLY_TIMEOUT_S)
        with self._cond:
            return [c for c in sent if c not in self.replies]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def out_of_caps(name: str, value: float, caps: Capabilities) -> bool:
    """Whether a value the device applied is one this probe does not allow (a wrong write)."""
    if name == "gain_db":
        return not caps.gain_min <= value <= caps.gain_max
    if name == "depth_mm":
        return all(abs(value - d) > 1e-6 for d in caps.depths_mm)
    if name == "freq_mhz":
        return all(abs(value - f) > 1e-6 for f in caps.freqs_mhz)
    if name == "tgc_db":
        return not caps.tgc_min <= value <= caps.tgc_max
    return False


def lost_event_count(seqs: list[int], counted_drops: int) -> int:
    """Gaps in an event sequence not accounted for by the daemon's own count of dropped events."""
    ordered = sorted(set(seqs))
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(ordered) if b > a + 1)
    return max(0, gaps - counted_drops)


def recovery(arrivals: list[float], after: float, run: int = 10, max_gap: float = 0.2) -> float | None:
    """Seconds from ``after`` to the first of ``run`` guidance arrivals none more than ``max_gap`` apart."""
    times = [t for t in arrivals if t >= after]
    for i in range(len(times) - run + 1):
        window = times[i : i + run]
        if all(b - a <= max_gap for a, b in itertools.pairwise(window)):
            return max(0.0, window[0] - after)
    return None


def longest_gap(arrivals: list[float], start: float, end: float) -> float:
    times = [t for t in arrivals if start <= t <= end]
    if len(times) < 2:
        return end - start
    return max(b - a for a, b in itertools.pairwise(times))


CAMERA_LOST_STATES = ("lost", "absent")  # status.camera.state once the camera has gone (docs/service.md)


@dataclass(frozen=True)
class CameraLoss:
    """One camera loss as the display saw it (:func:`judge_camera_loss`)."""

    kind: str
    held_s: float
    rate_hz: float  # guidance messages per second while the camera was gone
    gap_s: float  # the longest pause between them
    fallback_s: float | None  # from the loss to the first message guided from the image alone
    image_only: float  # share of the messages after that one that were image-only too
    camera_states: tuple[str, ...]  # status.camera.state as published while gone, in order
    said_lost: bool  # a status while gone said the camera was lost and guidance fell back to the model
    belief_restarts: int  # "the camera lost the probe for N s" restarts, until tracked again
    tracked_after_s: float | None  # from the camera's return to the first tracked guidance message
    return_gap_s: float  # the longest pause from the return to 1 s after tracked guidance

    def line(self) -> str:
        def s(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f} s"

        return (
            f"{self.kind} {self.held_s:.1f} s: status {'/'.join(self.camera_states) or 'none'}, "
            f"{self.rate_hz:.1f} msg/s, gap {self.gap_s:.2f} s, image-only after {s(self.fallback_s)} "
            f"({100 * self.image_only:.0f}%), belief restarts {self.belief_restarts}, "
            f"tracked again after {s(self.tracked_after_s)} (gap {self.return_gap_s:.2f} s)"
        )


def _said_lost(status: dict[str, Any]) -> bool:
    return (
        status.get("camera", {}).get("state") in CAMERA_LOST_STATES
        and status.get("guidance", {}).get("basis") == "model"
    )


def judge_camera_loss(
    kind: str,
    guidance: list[tuple[float, str]],
    statuses: list[tuple[float, dict[str, Any]]],
    events: list[dict[str, Any]],
    start: float,
    end: float,
) -> CameraLoss:
    """A loss from ``start`` to ``end`` judged from (arrival, basis) guidance, (arrival, message)
    statuses and the events received from its start until tracked guidance came back."""
    during = [(t, b) for t, b in guidance if start <= t <= end]
    fallback = next((t for t, b in during if b == IMAGE_ONLY_BASIS), None)
    after = [b for t, b in during if fallback is not None and t >= fallback]
    said = [m for t, m in statuses if start <= t <= end]
    states = [str(m.get("camera", {}).get("state")) for m in said]
    back = next((t for t, b in guidance if t >= end and b != IMAGE_ONLY_BASIS), None)
    settled = (back if back is not None else end) + 1.0
    return CameraLoss(
        kind=kind,
        held_s=round(end - start, 2),
        rate_hz=round(len(during) / max(1e-9, end - start), 1),
        gap_s=round(longest_gap([t for t, _ in during], start, end), 2),
        fallback_s=None if fallback is None else round(fallback - start, 2),
        image_only=round(sum(b == IMAGE_ONLY_BASIS for b in after) / len(after), 3) if after else 0.0,
        camera_states=tuple(s for i, s in enumerate(states) if i == 0 or s != states[i - 1]),
        said_lost=any(_said_lost(m) for m in said),
        belief_restarts=sum(1 for e in events if "camera lost the probe" in str(e.get("message"))),
        tracked_after_s=None if back is None else round(back - end, 2),
        return_gap_s=round(longest_gap([t for t, _ in guidance], end, settled), 2),
    )


CAMERA_SEED = 7  # the demo's and the camera tests' scene: all three markers seen at the start pose


class CameraRig:
    """The camera emulator on the campaign's socket: seed 7's abdomen, the probe held still on it;
    calibrated once (the probe off the patient, as at installation), then unplugged until the fault
    plugs it in, covers the markers with a hand, stops its stream and pulls its cable."""

    def __init__(self, workdir: Path) -> None:
        from sim.camera import Occluder, default_camera
        from sim.novice import random_start_pose
        from sim.phantom import make_phantom

        self.socket = workdir / "camera.sock"
        self.calibration = workdir / "camera-calibration.json"
        self.phantom = make_phantom("abdomen", CAMERA_SEED)
        self.probe_pose = random_start_pose(self.phantom, CAMERA_SEED)
        towards_camera = default_camera(CAMERA_SEED).pose.position_mm - self.probe_pose.position_mm
        self.hand = Occluder(self.probe_pose.position_mm + 0.45 * towards_camera, 45.0)
        self.covered = threading.Event()
        self.placed = False
        self.emulator: Any = None
        self._calibrate()
        self.placed = True

    def _calibrate(self) -> None:
        from service.tracking import calibration as cal
        from service.tracking.device import CameraSpec, read_frames

        self.plug()
        try:
            frames, intrinsics, serial = read_frames(CameraSpec("emulator", socket=str(self.socket)), 5)
            found = cal.calibrate_frames(((f.rgb, f.depth_mm) for f in frames), intrinsics, serial)
            cal.save(found, self.calibration)
        finally:
            self.unplug()

    def plug(self) -> None:
        from firmware_bridge.emulator.camera import CameraEmulator

        self.emulator = CameraEmulator(
            self.socket, self.phantom, lambda: self.probe_pose if self.placed else None, seed=CAMERA_SEED,
            occluder=lambda: self.hand if self.covered.is_set() else None,
        ).start()  # fmt: skip

    def unplug(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def lose(self, kind: str, lost: bool) -> None:
        """``hand`` over the markers, ``stream_stopped`` (frames stop, connection open), ``unplugged``."""
        if kind == "hand":
            (self.covered.set if lost else self.covered.clear)()
        elif kind == "stream_stopped":
            (self.emulator.stalled.set if lost else self.emulator.stalled.clear)()
        elif kind == "unplugged":
            (self.unplug if lost else self.plug)()
        else:
            raise ValueError(f"unknown camera loss {kind!r}")


class Campaign:
    """The daemon, broker and emulator of one campaign run (see the module docstring); with
    ``camera``, the daemon's camera is the camera emulator (:class:`CameraRig`, plugged in only
    during the camera fault: the other faults see an absent camera and guide from the image)."""

    def __init__(
        self, workdir: Path, scale: str = "short", log: Callable[[str], None] = print, camera: bool = False
    ) -> None:
        self.workdir, self.scale, self.log = workdir, scale, log
        self.long = scale == "long"
        self.broker = LocalBroker().start()
        self.link_path = str(workdir / "sonoguide-probe")
        self.caps = Capabilities()
        self.endpoint = PtyEndpoint(self.link_path)
        self.emulator = self._emulator(self.endpoint, self.caps)
        self.camera = CameraRig(workdir) if camera else None
        self.config = write_config(
            workdir, self.link_path, self.broker.port, auto=True,
            camera_socket=str(self.camera.socket) if self.camera else "",
            calibration=str(self.camera.calibration) if self.camera else "",
        )  # fmt: skip
        self.daemon = self._start_daemon()
        self.observer = Observer(self.broker.port)
        self.crashes = 0

    @staticmethod
    def _emulator(endpoint: PtyEndpoint, caps: Capabilities, **initial: float) -> ProbeEmulator:
        faults = Faults(misbehave={"accept-out-of-range"})  # a wrong write would land: counted here
        return ProbeEmulator(endpoint, caps=caps, faults=faults, initial_params=initial or None).start()

    def _start_daemon(self) -> DaemonProcess:
        daemon = DaemonProcess(self.config, self.workdir)
        daemon.wait_ready(60)
        return daemon

    def close(self) -> None:
        self.observer.close()
        self.daemon.stop()
        self.emulator.stop()
        self.endpoint.close()
        self.endpoint.remove_link()
        if self.camera is not None:
            self.camera.unplug()
        self.broker.close()

    # --- one fault ---------------------------------------------------------------------------------

    @contextmanager
    def _pinging(self, sent: list[bytes]) -> Iterator[None]:
        stop = threading.Event()

        def ping() -> None:
            while not stop.wait(0.25):
                if self.observer.connected:
                    sent.append(self.observer.send("ping"))

        thread = threading.Thread(target=ping, name="campaign-ping", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2)

    def run_fault(self, name: str) -> FaultResult:
        inject: Callable[[], tuple[int, str]] = getattr(self, f"_fault_{name}")
        obs = self.observer
        emu0, events0 = self.emulator, len(obs.events)
        writes0 = len(emu0.applied)
        drops0 = int(obs.status.get("mqtt", {}).get("events_dropped", 0))
        log0 = self.daemon.log_path.stat().st_size
        assert obs.wait(lambda: recovery(obs.guidance, time.monotonic() - 1.0, 5) is not None, 20), (
            f"no guidance before {name}"
        )
        pings: list[bytes] = []
        start = time.monotonic()
        with self._pinging(pings):
            requests, note = inject()
        end = time.monotonic()
        obs.wait(lambda: recovery(obs.guidance, end) is not None, RECOVERY_DEADLINE_S)
        rec = recovery(obs.guidance, end)
        detail, self._detail = self._detail, {}
        if "recovery_s" in detail:  # the fault's own recovery (camera: tracked guidance again)
            rec = detail["recovery_s"]
        lost_replies = len(obs.unanswered(pings)) + self._lost_requests
        self._lost_requests = 0
        crashes = self._crash_check(log0)
        events = obs.events[events0:]
        drops = int(obs.status.get("mqtt", {}).get("events_dropped", 0)) - drops0
        # each write judged by the probe it went to (a swap brings a probe with other limits)
        writes = [(w, emu0.caps) for w in list(emu0.applied)[writes0:]]
        if self.emulator is not emu0:
            writes += [(w, self.emulator.caps) for w in list(self.emulator.applied)]
        wrong = sum(1 for (p, _i, v, who), caps in writes if who == "host" and out_of_caps(p, v, caps))
        result = FaultResult(
            fault=name,
            recovery_s=None if rec is None else round(rec, 2),
            gap_s=round(longest_gap(obs.guidance, start - 0.5, end + (rec or RECOVERY_DEADLINE_S) + 0.5), 2),
            wrong_writes=wrong,
            false_manual=sum(
                1 for e in events if e["kind"] == "manual_change" and e.get("source") == "probe"
            ),
            lost_replies=lost_replies,
            lost_events=lost_event_count([int(e["seq"]) for e in events], drops),
            crashes=crashes + self._internal_errors,
            requests=len(pings) + requests,
            note=note,
            detail=detail,
        )
        self._internal_errors = 0
        self.log(json.dumps(result.as_dict()))
        return result

    _lost_requests = 0
    _internal_errors = 0
    _detail: dict[str, Any] = {}  # noqa: RUF012  (replaced, never mutated)

    def _crash_check(self, log_offset: int) -> int:
        crashes = 0
        if self.daemon.proc.poll() is not None:
            crashes += 1
            self.log(f"the daemon exited with {self.daemon.proc.returncode}; restarting it")
            self.daemon.stop()
            self.daemon = self._start_daemon()
        with self.daemon.log_path.open("rb") as f:
            f.seek(log_offset)
            crashes += f.read().count(b"Traceback (most recent call last)")
        return crashes

    def _hold(self, seconds: float) -> None:
        time.sleep(seconds)

    # --- the faults: each returns (extra requests sent, a note) ---------------------------------

    def _fault_corruption(self) -> tuple[int, str]:
        rate = 2e-6  # per byte: about one frame in eight of 256x256 damaged
        self.emulator.faults.corrupt_byte_rate = rate
        self._hold(6.0 if self.long else 1.5)
        self.emulator.faults.corrupt_byte_rate = 0.0
        return 0, f"line noise {rate:g}/byte"

    def _fault_dropped_chunks(self) -> tuple[int, str]:
        self.emulator.faults.drop_chunk_rate = 0.02
        self._hold(6.0 if self.long else 1.5)
        self.emulator.faults.drop_chunk_rate = 0.0
        return 0, "2% of frame chunks dropped"

    def _fault_stall(self) -> tuple[int, str]:
        return self._scheduled("stall", 2.0), "device silent 2 s"

    def _fault_reboot(self) -> tuple[int, str]:
        return self._scheduled("reboot", 1.5), "silent 1.5 s, back with power-on settings"

    def _fault_unplug(self) -> tuple[int, str]:
        return self._scheduled("disconnect", 1.0), "pty closed 1 s, re-created behind the link"

    def _scheduled(self, kind: str, seconds: float) -> int:
        faults, emu = self.emulator.faults, self.emulator
        setattr(faults, f"{kind}_for_s", seconds)
        setattr(faults, f"{kind}_after_s", 0.0)
        self.observer.wait(lambda: getattr(faults, f"{kind}_after_s") is None, 5)
        self._hold(seconds)
        self.observer.wait(lambda: emu.streaming, 10)
        return 0

    def _fault_probe_swap(self) -> tuple[int, str]:
        old_serial, seen = self.caps.serial, len(self.observer.events)
        self.emulator.stop()
        self.endpoint.close()
        serial = f"EMU{int(old_serial[3:]) + 1:04d}"
        self.caps = dataclasses.replace(self.caps, serial=serial, depths_mm=[20.0, 40.0, 60.0])
        self.endpoint = PtyEndpoint(self.link_path)
        self.emulator = self._emulator(self.endpoint, self.caps, depth_mm=40.0)
        self.observer.wait(lambda: self.emulator.streaming, 15)
        said = self.observer.wait(
            lambda: any("different probe" in str(e.get("message")) for e in self.observer.events[seen:]), 10
        )
        return 0, (
            f"{old_serial} -> {self.caps.serial}, depths {self.caps.depths_mm}; the daemon "
            + ("announced the new probe" if said else "did NOT announce the new probe")
        )

    def _fault_broker_restart(self) -> tuple[int, str]:
        self.broker.stop(kill=True)
        self._hold(1.0)
        self.broker.start()
        self.observer.wait(lambda: self.observer.connected, 10)
        return 0, "mosquitto killed, back after 1 s (no persistence)"

    def _fault_camera_loss(self) -> tuple[int, str]:
        """The camera plugged in and tracking, then lost three ways, each brought back; the camera
        unplugged again at the end. Recovery: the slowest return to tracked guidance."""
        rig, obs = self.camera, self.observer
        if rig is None:
            raise RuntimeError("camera_loss needs the campaign's camera (Campaign(camera=True))")
        holds = (
            {"hand": 3.0, "stream_stopped": 4.0, "unplugged": 8.0}  # unplugged: past the belief's 5 s
            if self.long
            else {"hand": 1.0, "unplugged": 1.0}
        )

        def said_since(t0: float) -> bool:
            return any(_said_lost(m) for t, m in obs.statuses if t >= t0)

        def tracked_since(t0: float) -> bool:
            return obs.first_tracked(t0) is not None

        rig.plug()
        plugged = time.monotonic()
        obs.wait(functools.partial(tracked_since, plugged), RECOVERY_DEADLINE_S)
        first = obs.first_tracked(plugged)
        losses: list[CameraLoss] = []
        for kind, hold in holds.items():
            seen, start = len(obs.events), time.monotonic()
            rig.lose(kind, True)
            self._hold(hold)
            # and on until a status (published every 2 s) has said it, as a display would see
            obs.wait(functools.partial(said_since, start), 3.0)
            end = time.monotonic()
            rig.lose(kind, False)
            obs.wait(functools.partial(tracked_since, end), RECOVERY_DEADLINE_S)
            self._hold(1.0)  # tracked a while before the next loss: the return is judged on its own
            guidance = obs.guided_since(start - 1.0)
            losses.append(
                judge_camera_loss(kind, guidance, list(obs.statuses), obs.events[seen:], start, end)
            )
        rig.unplug()
        backs = [c.tracked_after_s for c in losses]
        self._detail = {
            "recovery_s": None if first is None or None in backs else max(b for b in backs if b is not None),
            "first_tracked_s": None if first is None else round(first - plugged, 2),
            "losses": [dataclasses.asdict(c) for c in losses],
        }
        return 0, "; ".join(c.line() for c in losses) + (
            "" if first is not None else "; NEVER tracked once plugged in"
        )

    def _fault_freeze(self) -> tuple[int, str]:
        hold = 20.0 if self.long else 2.0  # long: past the unit's WatchdogSec=15s
        frozen = self.observer.request("freeze", {"frozen": True})
        self._hold(hold)
        state = self.observer.status.get("probe", {}).get("state")
        live = self.observer.request("freeze", {"frozen": False})
        self._lost_requests += (frozen is None) + (live is None)
        return 2, f"frozen {hold:g} s; status said {state!r} while frozen"

    def _auto_back_on(self) -> None:
        """Switch auto gain and auto depth back on after a fault that may have switched them off (the
        fuzz does); a refused or unanswered request counts as a lost reply."""
        for which in ("gain", "depth"):
            reply = self.observer.request("set_auto", {"param": which, "enabled": True})
            if reply is None or not reply.get("ok"):
                self._lost_requests += 1
                log.warning("campaign: set_auto %s on was not carried out: %s", which, reply)

    def _fault_command_flood(self) -> tuple[int, str]:
        n = 2000 if self.long else 200
        flood = Observer(self.broker.port, "flood")
        try:
            sent = [
                flood.send("set_param", {"param": "gain_db", "value": 40.0 + (i % 20) * 0.5})
                for i in range(n)
            ]
            lost = flood.unanswered(sent)
            busy = sum(1 for c in sent if c in flood.replies and "retry_after_s" in flood.replies[c])
        finally:
            flood.close()
        self._lost_requests += len(lost)
        self._auto_back_on()
        return n, f"{n} set_param as fast as paho sends; {busy} answered busy"

    def _fault_fuzzed_commands(self) -> tuple[int, str]:
        n = 3000 if self.long else 60
        clients = [Observer(self.broker.port, f"fuzz{i}") for i in range(8 if self.long else 2)]
        sent: list[tuple[Observer, bytes]] = []
        try:
            for i, (command, raw) in enumerate(fuzzed_requests(n)):
                client = clients[i % len(clients)]
                sent.append((client, client.send(command, raw=raw)))
                if self.long and i % (15 * len(clients)) == 0:
                    time.sleep(1.0)  # under the per-client rate limit: most get run, not "busy"
            lost = sum(len(c.unanswered([corr for o, corr in sent if o is c])) for c in clients)
            internal = sum(
                1 for o, corr in sent if "internal error" in str(o.replies.get(corr, {}).get("error", ""))
            )
        finally:
            for c in clients:
                c.close()
        self._lost_requests += lost
        self._internal_errors += internal
        # Whatever the fuzz left: live image, auto on.
        self.observer.request("freeze", {"frozen": False})
        self._auto_back_on()
        return n, f"{n} hypothesis-made requests over {len(clients)} clients"

    def run(self, faults: tuple[str, ...]) -> list[FaultResult]:
        return [self.run_fault(f) for f in faults]


FUZZ_COMMANDS = ("set_param", "step_param", "set_auto", "freeze", "ping", "preset", "capture", "nonesuch")


def fuzzed_requests(n: int, seed: int = 16) -> list[tuple[str, bytes]]:
    """``n`` (command, payload) pairs drawn by hypothesis: JSON with the commands' own field names and
    hostile values (huge, non-finite, nested, wrong types), and raw bytes that are not JSON at all."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40), st.sampled_from(["gain_db", "depth_mm", "freq_mhz", "tgc_db", "frozen", "up"]),
    )  # fmt: skip
    values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)  # fmt: skip
    keys = st.sampled_from(["param", "value", "steps", "gain", "depth", "frozen", "name", "preset", "x"])
    body = st.one_of(
        st.dictionaries(keys, values, max_size=4).map(lambda d: json.dumps(d).encode()),
        values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )
    drawn: list[tuple[str, bytes]] = []

    @settings(max_examples=n, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.sampled_from(FUZZ_COMMANDS), body)
    def draw(command: str, payload: bytes) -> None:
        drawn.append((command, payload))

    draw()
    return drawn[:n]


def format_table(results: list[FaultResult]) -> str:
    head = "| Fault | Recovery (s) | Longest guidance gap (s) | Wrong writes | False manual changes | Lost replies | Lost events | Crashes | Requests | Note |"
    rows = [head, "|" + "---|" * 10]
    for r in results:
        rec = "never" if r.recovery_s is None else f"{r.recovery_s:.2f}"
        rows.append(
            f"| {r.fault} | {rec} | {r.gap_s:.2f} | {r.wrong_writes} | {r.false_manual} | {r.lost_replies} | "
            f"{r.lost_events} | {r.crashes} | {r.requests} | {r.note} |"
        )
    return "\n".join(rows)


def run_campaign(
    faults: tuple[str, ...] = SHORT, scale: str = "short", log: Callable[[str], None] = print
) -> list[FaultResult]:
    unknown = sorted(set(faults) - set(LONG))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(LONG)}")
    with tempfile.TemporaryDirectory(prefix="sonoguide-faults-") as tmp:
        campaign = Campaign(Path(tmp), scale, log, camera="camera_loss" in faults)
        try:
            return campaign.run(faults)
        finally:
            campaign.close()


def soak(seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The campaign's set-up left running at 30 fps: guidance gaps and the daemon's RSS over time."""
    with tempfile.TemporaryDirectory(prefix="sonoguide-soak-") as tmp:
        campaign = Campaign(Path(tmp), "long", log)
        try:
            obs, daemon = campaign.observer, campaign.daemon
            t0 = time.monotonic()
            samples: list[tuple[float, float]] = []
            while time.monotonic() - t0 < seconds:
                time.sleep(min(10.0, max(0.0, seconds - (time.monotonic() - t0))))
                samples.append((round(time.monotonic() - t0, 1), daemon.rss_mb()))
                log(f"soak {samples[-1][0]:.0f} s: RSS {samples[-1][1]:.1f} MB, guidance {len(obs.guidance)}")
            arrivals = [t for t in obs.guidance if t >= t0]
            first = next((mb for t, mb in samples if t >= 0.2 * seconds), samples[0][1])
            last = samples[-1][1]
            return {
                "seconds": round(time.monotonic() - t0, 1),
                "guidance": len(arrivals),
                "guidance_rate": round(len(arrivals) / max(1e-9, seconds), 2),
                "longest_gap_s": round(longest_gap(arrivals, t0, t0 + seconds), 3),
                "rss_mb_after_warmup": first,
                "rss_mb_end": last,
                "rss_growth_pct": round(100.0 * (last - first) / first, 2) if first else math.nan,
                "crashes": campaign._crash_check(0),
                "samples": samples,
            }
        finally:
            campaign.close()
