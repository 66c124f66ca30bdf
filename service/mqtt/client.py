"""The daemon's MQTT side: paho-mqtt 2, MQTT 5, driven by the topic table.

- ``available``: last will ``offline`` (retained); ``online`` on every connect; ``stopped`` on clean exit.
- Retained ``status`` and ``settings`` are remembered and republished on every (re)connect.
- Subscriptions are made in on_connect, so they come back after a reconnect with a clean session.
- paho's own thread (``loop_start``) reconnects with exponential backoff (``reconnect_delay_set``).
- Outgoing queue bounded (``max_queued_messages_set``); guidance is dropped, not queued, while
  disconnected: a late instruction is worse than none.
- Commands are parsed and validated against the table here, then run on one worker thread (never on
  paho's network thread, never on a pipeline thread); every outcome is answered on the response topic.
- Exceptions inside callbacks are caught and logged: they must never kill the network loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from firmware_bridge.devicelog import device_logger
from service.daemon.config import MqttConfig
from service.mqtt.bounded_json import InputError, loads_bounded, quote
from service.mqtt.rate_limit import RateLimiter
from service.mqtt.topics import BY_NAME, COMMAND_FILTERS, COMMANDS, reply_problem, split_command, topic_path
from service.mqtt.validate import validate

log = logging.getLogger(__name__)

MAX_QUEUED = 200  # outgoing messages paho may hold while the broker is slow or away
MAX_PENDING_COMMANDS = 16
MAX_NAME_CHARS = 64
# Per requester: a display's buttons send a few commands a second; a flood beyond this is answered busy.
COMMAND_RATE_PER_S = 20.0
COMMAND_BURST = 40


class CommandError(Exception):
    """A command that cannot be done as asked; the message goes back to the requester."""


CommandHandler = Callable[[str, dict[str, Any]], dict[str, Any]]


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap a paho callback: an exception is logged, never propagated into the network loop."""

    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in MQTT callback %s", fn.__name__)

    wrapper.__name__ = fn.__name__
    return wrapper


class MqttApi:
    """Publishes the daemon's topics and serves its commands. Thread-safe publish methods."""

    def __init__(
        self,
        device_id: str,
        config: MqttConfig,
        command_handler: CommandHandler | None = None,
        reconnect_delay_s: tuple[float, float] = (0.5, 10.0),
        keepalive_s: int = 10,
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.command_handler = command_handler
        self.keepalive_s = keepalive_s
        self.log = device_logger(__name__, f"mqtt:{config.host}:{config.port}")
        self._lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # topic name -> last payload, republished on reconnect
        self._connected = threading.Event()
        self._listening = threading.Event()  # the broker acknowledged our command subscription
        self._stopping = False
        self._commands: queue.Queue[tuple[str, dict[str, Any], str | None, bytes | None] | None] = (
            queue.Queue(MAX_PENDING_COMMANDS)
        )
        self._worker: threading.Thread | None = None
        self._serving: tuple[str, str | None, bytes | None] | None = None  # the command on the worker now
        self.stats = {
            "guidance_sent": 0,
            "guidance_dropped": 0,
            "connects": 0,
            "commands": 0,
            "queue_full": 0,
            "retained_refused": 0,
            "replies_refused": 0,
            "events_dropped": 0,
            "replies_dropped": 0,
            "commands_busy": 0,
        }
        self.rate = RateLimiter(COMMAND_RATE_PER_S, COMMAND_BURST, time.monotonic)
        self.client = self._make_client(reconnect_delay_s)

    def topic(self, name: str) -> str:
        return topic_path(self.device_id, name)

    # --- set-up ---------------------------------------------------------------------------------

    def _make_client(self, reconnect_delay_s: tuple[float, float]) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"sonoguide-{self.device_id}",
            protocol=mqtt.MQTTv5,
        )
        c.will_set(self.topic("available"), b"offline", qos=1, retain=True)
        if self.config.username:
            c.username_pw_set(self.config.username, self.config.password or None)
        if self.config.tls:
            c.tls_set(
                ca_certs=self.config.ca_file or None,
                certfile=self.config.cert_file or None,
                keyfile=self.config.key_file or None,
            )
        c.max_queued_messages_set(MAX_QUEUED)
        c.max_inflight_messages_set(20)
        lo, hi = reconnect_delay_s
        c.reconnect_delay_set(min_delay=lo, max_delay=hi)  # type: ignore[arg-type]  # floats work
        c.on_connect = _safe(self._on_connect)
        c.on_disconnect = _safe(self._on_disconnect)
        c.on_message = _safe(self._on_message)
        c.on_subscribe = _safe(self._on_subscribe)
        return c

    def start(self) -> MqttApi:
        """Connect in the background; paho keeps retrying until the broker answers."""
        self._worker = threading.Thread(target=self._command_loop, name="mqtt-commands", daemon=True)
        self._worker.start()
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.keepalive_s)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Connected, and commands reach us: the broker acknowledged the ``cmd/+`` subscription.

        (A request published between CONNACK and SUBACK would find no subscriber and be lost.)
        """
        deadline = time.monotonic() + timeout
        return self._connected.wait(timeout) and self._listening.wait(max(0.0, deadline - time.monotonic()))

    @property
    def worker_alive(self) -> bool:
        """The command worker thread runs (a command may take long; only its death is a hang)."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, timeout: float = 3.0) -> None:
        """Clean exit: retained ``stopped``, then disconnect (so the broker does not send the will)."""
        self._stopping = True
        if self._connected.is_set():
            info = self.client.publish(self.topic("available"), b"stopped", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._commands.put(None) if not self._commands.full() else None
        if self._worker is not None:
            self._worker.join(timeout)

    # --- callbacks (paho's thread) ----------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.log.warning("broker refused the connection: %s", rc)
            return
        self.stats["connects"] += 1
        self.log.info("connected (connection %d)", self.stats["connects"])
        _send_without_delay(client)
        # retainAsPublished: a command published with the retain flag arrives flagged even live, so it
        # can be refused (a retained command would otherwise re-run on every start and reconnect).
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe([(self.topic(f), options) for f in COMMAND_FILTERS])
        client.publish(self.topic("available"), b"online", qos=1, retain=True)
        with self._lock:
            retained = dict(self._retained)
        for name, payload in retained.items():
            client.publish(self.topic(name), payload, qos=BY_NAME[name].qos, retain=True)
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        if all(not getattr(code, "is_failure", False) for code in codes):
            self._listening.set()
        else:
            self.log.warning("the broker refused the command subscription: %s", codes)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()
        self._listening.clear()
        if not self._stopping:
            self.log.warning("disconnected from the broker (%s); reconnecting with backoff", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        name, requester = split_command(msg.topic.removeprefix(self.topic("")))
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) or None
        correlation = getattr(props, "CorrelationData", None)
        misdirected = response_topic and reply_problem(self.device_id, requester, response_topic, correlation)
        if misdirected:  # not run, and no reply: there is nowhere the requester may be answered
            self.stats["replies_refused"] += 1
            self.log.warning("refused command %s from %s: %s", quote(name), quote(requester), misdirected)
            response_topic = None
        if msg.retain:
            self._refuse_retained(client, msg, name, response_topic, correlation)
            return
        if misdirected:
            return
        wait_s = self.rate.admit(requester or _reply_client(self.topic("reply/"), response_topic))
        if wait_s > 0:
            self._busy(
                name,
                response_topic,
                correlation,
                f"more than {COMMAND_RATE_PER_S:g} commands a second from this client",
                wait_s,
            )
            return
        problem, request = parse_command(name, bytes(msg.payload))
        if problem is not None:
            self.log.warning("rejected command %s: %s", quote(name), problem)
            self._respond(name, response_topic, correlation, {"ok": False, "command": name, "error": problem})
            return
        try:
            self._commands.put_nowait((name, request, response_topic, correlation))
        except queue.Full:
            self._busy(name, response_topic, correlation, "too many pending commands", 0.5)

    def _busy(self, name: str, topic: str | None, corr: bytes | None, why: str, retry_after_s: float) -> None:
        self.stats["commands_busy"] += 1
        retry = max(0.01, round(retry_after_s, 2))
        error = f"busy: {why}; retry after {retry:g} s"
        self._respond(
            name, topic, corr, {"ok": False, "command": name, "error": error, "retry_after_s": retry}
        )

    def _refuse_retained(
        self, client: mqtt.Client, msg: mqtt.MQTTMessage, name: str, topic: str | None, corr: bytes | None
    ) -> None:
        """A retained command is refused, never run, and cleared from the broker's store."""
        self.stats["retained_refused"] += 1
        if msg.payload:  # an empty retained payload is the clearing itself, coming back
            self.log.warning("refused retained command %s; clearing it from the broker", quote(name))
            client.publish(msg.topic, b"", qos=1, retain=True)
            error = "retained commands are refused: publish commands without the retain flag"
            self._respond(name, topic, corr, {"ok": False, "command": name, "error": error})

    # --- commands (worker thread) -------------------------------------------------------------------

    def _command_loop(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            name, request, response_topic, correlation = item
            self.stats["commands"] += 1
            self._serving = (name, response_topic, correlation)
            try:
                if self.command_handler is None:
                    raise CommandError("commands are not available yet")
                result = self.command_handler(name, request)
                reply: dict[str, Any] = {"ok": True, "command": name, "result": result}
            except CommandError as e:
                reply = {"ok": False, "command": name, "error": str(e)}
            except Exception as e:  # a bug must not end the worker; the requester still hears back
                self.log.exception("command %s failed", name)
                reply = {
                    "ok": False,
                    "command": name,
                    "error": f"internal error: {type(e).__name__}: {quote(str(e), 200)}",
                }
            self._serving = None
            try:
                self._respond(name, response_topic, correlation, reply)
            except Exception:
                self.log.exception("could not send the response to %s", name)

    def progress(self, message: str) -> None:
        """A step of the command the worker is serving, on its response topic (final reply follows)."""
        serving = self._serving
        if serving is None:
            return
        name, response_topic, correlation = serving
        try:
            self._respond(
                name, response_topic, correlation, {"ok": True, "command": name, "progress": message}
            )
        except Exception:
            self.log.exception("could not send progress of %s", name)

    def _respond(
        self, name: str, response_topic: str | None, correlation: bytes | None, reply: dict[str, Any]
    ) -> None:
        if not response_topic:
            if not reply["ok"]:
                self.log.warning("command %s without a response topic failed: %s", name, reply["error"])
            return
        if len(reply["command"]) > MAX_NAME_CHARS:  # an unknown command's name is the requester's text
            reply = {**reply, "command": reply["command"][:MAX_NAME_CHARS] + "…"}
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        info = self.client.publish(response_topic, json.dumps(reply).encode(), qos=1, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats["replies_dropped"] += 1
            self.log.warning("outgoing queue full: the reply to %s was dropped", quote(name))

    # --- publishing (any thread) ---------------------------------------------------------------------

    def publish_retained(self, name: str, message: dict[str, Any]) -> None:
        """``status`` or ``settings``: remembered for reconnects, sent now if connected."""
        payload = json.dumps(message, separators=(",", ":")).encode()
        with self._lock:
            if self._retained.get(name) == payload:
                return
            self._retained[name] = payload
        if self._connected.is_set():
            self._publish(name, payload)

    def publish_guidance(self, message: dict[str, Any]) -> bool:
        """QoS 0 with a 1 s expiry; dropped (False) while disconnected instead of queued."""
        if not self._connected.is_set():
            self.stats["guidance_dropped"] += 1
            return False
        t = BY_NAME["guidance"]
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = t.expiry_s
        ok = self._publish("guidance", json.dumps(message, separators=(",", ":")).encode(), props)
        self.stats["guidance_sent" if ok else "guidance_dropped"] += 1
        return ok

    def publish_event(self, message: dict[str, Any]) -> bool:
        """QoS 1: paho queues it (bounded) across a short disconnection."""
        ok = self._publish("events", json.dumps(message, separators=(",", ":")).encode())
        if not ok:
            self.stats["events_dropped"] += 1
            self.log.warning("outgoing queue full: event %s dropped", message.get("seq"))
        return ok

    def losses(self) -> dict[str, int]:
        """What was not delivered or not run, by kind (the ``mqtt`` field of ``status``)."""
        keys = ("guidance_dropped", "events_dropped", "replies_dropped", "commands_busy",
                "replies_refused", "retained_refused")  # fmt: skip
        return {k: self.stats[k] for k in keys}

    def _publish(self, name: str, payload: bytes, props: Properties | None = None) -> bool:
        t = BY_NAME[name]
        info = self.client.publish(self.topic(name), payload, qos=t.qos, retain=t.retain, properties=props)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats["queue_full"] += 1
            return False
        return info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


MAX_PROBLEMS_QUOTED = 5


def _reply_client(reply_prefix: str, response_topic: str | None) -> str:
    """The requester a bare command names through its (already checked) response topic."""
    if not response_topic:
        return "-"
    return response_topic.removeprefix(reply_prefix).partition("/")[0]


def parse_command(name: str, payload: bytes) -> tuple[str | None, dict[str, Any]]:
    """(problem, request): the problem names what is wrong, for the error response (bounded)."""
    topic = COMMANDS.get(name)
    if topic is None:
        return f"unknown command {quote(name)}; known: {', '.join(sorted(COMMANDS))}", {}
    if not payload.strip():
        request: Any = {}
    else:
        try:
            request = loads_bounded(payload)
        except InputError as e:
            return str(e), {}
    problems = validate(request, topic.schema, "")
    if problems:
        more = len(problems) - MAX_PROBLEMS_QUOTED
        shown = problems[:MAX_PROBLEMS_QUOTED] + ([f"and {more} more"] if more > 0 else [])
        return "invalid request: " + "; ".join(shown), {}
    return None, request


def _send_without_delay(client: mqtt.Client) -> None:
    """Turn Nagle off: guidance is many small messages a frame, and with Nagle on, the second waits
    for the broker's (delayed) ACK of the first: tens of ms of tail latency. paho leaves it on."""
    sock = client.socket()
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # an SSL socket is a socket.socket; a Unix socket has no Nagle
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
