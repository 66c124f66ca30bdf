"""Test helpers for the service: the probe on the virtual bench, and an MQTT recorder.

``EmulatedProbe`` is the real chain: the reference emulator (rendering with the simulator, abdomen
preset) on a real pseudo-terminal, and a real ``ProbeLink`` on the other end. The probe pose is the
caller's (``probe.pose``), and ``truth()`` gives the simulator's ground truth for the current pose and
settings, so tests compare the daemon's decisions with the physics, not with numbers they made up.

``SimTimeProbe`` is for simulated time only (``Pipeline.step``): the same image source and the
emulator's own parameter rules, with no link and no threads, because a serial link runs in real time.

The recorder is a real paho-mqtt client on the real broker, validating every message with jsonschema.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_bridge import messages
from firmware_bridge.emulator import CallablePoseSource, Pose, ProbeEmulator, SimImageSource
from firmware_bridge.emulator.state import Capabilities, apply_param, default_params
from firmware_bridge.link import ProbeLink
from firmware_bridge.ptyport import PtyPair
from service.tools.evaluate.simdevice import SimFrame
from sim.truth import GroundTruth, ground_truth
from sim.types import ImagingSettings

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "mqtt"
PRESET = "abdomen"


class EmulatedProbe:
    """Emulator (sim images) on a pty + a started ProbeLink. ``gain_offset_db``: start this far from
    the best gain of the start view (negative = too dark)."""

    def __init__(
        self, seed: int = 2, gain_offset_db: float | None = None, depth_mm: float = 120.0, fps: float = 30.0
    ) -> None:
        self.source = SimImageSource(PRESET, seed)
        self.phantom = self.source.phantom
        self.caps = Capabilities(**self.source.capabilities(), fps=fps)
        self.pose: Pose = self.source.emulator_pose(self.phantom.target_pose)
        initial = {**self.source.default_params(), "depth_mm": depth_mm}
        if gain_offset_db is not None:
            settings = ImagingSettings(initial["gain_db"], depth_mm, initial["freq_mhz"])
            best = ground_truth(self.phantom, self.phantom.target_pose, settings).best_gain_db
            initial["gain_db"] = round(best + gain_offset_db)
        self.pty = PtyPair()
        self.emulator = ProbeEmulator(
            self.pty.device_fd,
            self.source,
            CallablePoseSource(lambda t: self.pose),
            self.caps,
            initial_params=initial,
        ).start()
        self.link = ProbeLink(self.pty.host_path, name="probe").start()

    @property
    def params(self) -> dict[str, Any]:
        return self.emulator.params.snapshot()

    def host_sets(self, name: str) -> list[float]:
        """Values the host set for ``name``, in order (the emulator's own record)."""
        return [v for n, _, v, who in list(self.emulator.applied) if n == name and who == "host"]

    def truth(self) -> GroundTruth:
        p = self.params
        settings = ImagingSettings(p["gain_db"], p["depth_mm"], p["freq_mhz"])
        return ground_truth(self.phantom, self.source.sim_pose(self.pose), settings)

    def close(self) -> None:
        self.link.stop()
        self.emulator.stop()
        self.pty.close()


class SimTimeProbe:
    """The probe for ``Pipeline.step`` on a simulated clock: ``frame(t)`` renders, ``set_param`` applies
    the emulator's parameter rules (snap to step, range, depth list) and returns the read-back value."""

    def __init__(self, seed: int = 2, initial: dict[str, float] | None = None) -> None:
        self.source = SimImageSource(PRESET, seed)
        self.caps = Capabilities(**self.source.capabilities())
        self.info = {"capabilities": dict(self.caps.__dict__)}
        self.params = default_params(self.caps)
        for name, value in {**self.source.default_params(), **(initial or {})}.items():
            self.set_param(name, value)
        self.pose = self.source.emulator_pose(self.source.phantom.target_pose)
        self._frame_id = 0

    def frame(self, t: float) -> SimFrame:
        self._frame_id += 1
        p = self.params.snapshot()
        img = self.source.render(p, self.pose, t)
        return SimFrame(self._frame_id, int(t * 1e6), t, img, {**p, "contact": self.pose.in_contact})

    def set_param(self, name: str, value: Any) -> float:
        result = apply_param(self.params, self.caps, messages.PARAM_IDS[name], 0, float(value))
        if isinstance(result, int):
            raise ValueError(f"{name} = {value}: {messages.ERROR_NAMES[result]}")
        return result

    def get_param(self, name: str) -> float:
        return float(self.params.snapshot()[name])

    def latest_frame(self, timeout: float = 0.1) -> None:
        return None  # frames come in through Pipeline.step


def schema_for(topic_name: str) -> dict[str, Any]:
    stem = topic_name.replace("/", "-")
    return json.loads((SCHEMAS / f"{stem}.schema.json").read_text())


@dataclass
class Received:
    topic: str
    name: str  # relative to the device root
    payload: Any
    retain: bool
    props: Any
    at: float


class Recorder:
    """Subscribes to sonoguide/<id>/# and to its own reply topic; every message is schema-checked."""

    def __init__(self, port: int, device_id: str) -> None:
        self.root = f"sonoguide/{device_id}/"
        self.reply_topic = f"{self.root}reply/test-{uuid.uuid4().hex[:8]}/r"  # the daemon answers only here
        self.messages: list[Received] = []
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.reply_log: list[tuple[bytes, dict[str, Any]]] = []
        self.invalid: list[str] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "recorder could not subscribe"

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe([(self.root + "#", 1), (self.reply_topic, 1)])

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.reply_topic:
            body = json.loads(msg.payload)
            corr = getattr(msg.properties, "CorrelationData", b"")
            name = body.get("command", "?")
            self._check(body, f"cmd/{name}", response=True)
            with self._cond:
                self.replies[corr] = body
                self.reply_log.append((corr, body))  # every reply, progress ones included
                self._cond.notify_all()
            return
        name = msg.topic.removeprefix(self.root)
        if name.startswith(("cmd/", "reply/")):
            return  # requests (ours or a display's), and the replies to other requesters
        payload: Any = msg.payload.decode() if name == "available" else json.loads(msg.payload)
        self._check(payload, name)
        with self._cond:
            self.messages.append(
                Received(msg.topic, name, payload, bool(msg.retain), msg.properties, time.monotonic())
            )
            self._cond.notify_all()

    def _check(self, payload: Any, name: str, response: bool = False) -> None:
        stem = name.replace("/", "-") + (".response" if response else "")
        path = SCHEMAS / f"{stem}.schema.json"
        if response and not path.is_file():
            path = SCHEMAS / "cmd-ping.response.schema.json"  # unknown command: errors share one shape
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # once seen under load in make test: say so, keep recording
            self.invalid.append(f"{name}: its schema {path.name} could not be read ({e})")
            return
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(payload)]
        if errors:
            self.invalid.append(f"{name}: {errors} in {payload}")

    def of(self, name: str, since: float = 0.0) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.name == name and m.at >= since]

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def request(
        self,
        command: str,
        body: Any = None,
        raw: bytes | None = None,
        timeout: float = 5.0,
        final: bool = False,
    ) -> dict[str, Any]:
        """The reply (``final``: the last one, after any ``progress`` replies of a long command)."""
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.client.publish(self.root + "cmd/" + command, payload, qos=1, properties=props)
        done = (
            (lambda: corr in self.replies and "progress" not in self.replies[corr])
            if final
            else (lambda: corr in self.replies)
        )
        assert self.wait_for(done, timeout), f"no response to {command}"
        return self.replies[corr]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
