"""Test helpers for the service: a synthetic frame source with the ProbeLink API, and an MQTT recorder.

``SyntheticProbe`` is a test double of the probe link ONLY because firmware_bridge.link is not in this
branch yet; it is deliberately minimal (frames at a fixed rate, set_param with read-back). Its image
responds to gain and depth with the real conventions: brighter with more gain (log-compressed, about
255/60 grey levels per dB), and tissue that ends at ``structure_mm`` below the skin.
The recorder is a real paho-mqtt client on the real broker, validating every message with jsonschema.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "mqtt"


@dataclass
class Frame:
    frame_id: int
    device_ts_us: int
    host_time: float
    image: np.ndarray
    params: dict[str, Any]


@dataclass
class Info:
    serial: str = "TEST-0001"
    firmware_version: str = "synthetic"
    capabilities: dict[str, Any] = field(
        default_factory=lambda: {
            "gain_range_db": (0.0, 90.0),
            "gain_step_db": 1.0,
            "depth_steps_mm": (40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 180.0),
        }
    )


class SyntheticProbe:
    def __init__(
        self, gain_db: float = 50.0, depth_mm: float = 120.0, best_gain_db: float = 50.0,
        structure_mm: float = 200.0, fps: float = 30.0, size: int = 64,
    ) -> None:  # fmt: skip
        self.info = Info()
        self.params: dict[str, Any] = {
            "gain_db": gain_db,
            "depth_mm": depth_mm,
            "frequency_mhz": 3.5,
            "freeze": False,
        }
        self.best_gain_db, self.structure_mm, self.fps, self.size = best_gain_db, structure_mm, fps, size
        self.set_calls: list[tuple[str, Any]] = []
        self._lock = threading.Condition()
        self._frame: Frame | None = None
        self._stop = threading.Event()
        self._rng = np.random.default_rng(1)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SyntheticProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def render(self) -> np.ndarray:
        with self._lock:
            gain, depth = float(self.params["gain_db"]), float(self.params["depth_mm"])
        level = 100.0 + (gain - self.best_gain_db) * 255.0 / 60.0
        z = (np.arange(self.size) + 0.5) / self.size * depth
        tissue = (z < self.structure_mm)[:, None]
        speckle = level * (1 + 0.2 * self._rng.standard_normal((self.size, self.size)))
        image = np.where(tissue, speckle, self._rng.uniform(0, 8, (self.size, self.size)))
        return np.clip(image, 0, 255).astype(np.uint8)

    def _run(self) -> None:
        i, t0 = 0, time.monotonic()
        while not self._stop.is_set():
            i += 1
            frame = Frame(
                i, int((time.monotonic() - t0) * 1e6), time.monotonic(), self.render(), dict(self.params)
            )
            with self._lock:
                self._frame = frame
                self._lock.notify_all()
            self._stop.wait(max(0.0, t0 + i / self.fps - time.monotonic()))

    def latest_frame(self, timeout: float = 0.1) -> Frame | None:
        with self._lock:
            last = self._frame.frame_id if self._frame else 0
            self._lock.wait_for(lambda: self._frame is not None and self._frame.frame_id != last, timeout)
            return self._frame

    def set_param(self, name: str, value: Any) -> Any:
        if name not in self.params:
            raise ValueError(f"unknown parameter {name}")
        with self._lock:
            self.params[name] = value
            self.set_calls.append((name, value))
        return value

    def get_param(self, name: str) -> Any:
        return self.params[name]

    def press_button(self, name: str, value: float) -> None:
        """A change made on the probe itself: no set_param call from the service."""
        with self._lock:
            self.params[name] = value


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
        self.reply_topic = f"test/{uuid.uuid4().hex}/reply"
        self.messages: list[Received] = []
        self.replies: dict[bytes, dict[str, Any]] = {}
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
                self._cond.notify_all()
            return
        name = msg.topic.removeprefix(self.root)
        if name.startswith("cmd/"):
            return  # our own requests
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
        schema = json.loads(path.read_text())
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
        self, command: str, body: Any = None, raw: bytes | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.client.publish(self.root + "cmd/" + command, payload, qos=1, properties=props)
        assert self.wait_for(lambda: corr in self.replies, timeout), f"no response to {command}"
        return self.replies[corr]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
