"""`sonoguide doctor` next to a running daemon: ask it over MQTT instead of touching its probe port.

Opening the port a running service holds would at best be refused (the daemon holds it exclusively)
and at worst take the probe's bytes from it. So doctor first listens for the daemon's retained
``available`` and ``status``; when it is ``online`` it sends ``cmd/ping`` and reports the probe as the
service sees it.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from service.mqtt.topics import topic_path
from service.tools.doctor_checks import mqtt_client


@dataclass(frozen=True)
class RunningService:
    version: str
    uptime_s: float
    status: dict[str, Any]  # the daemon's last retained status ({} if none yet)


def ask_running_service(
    device_id: str,
    host: str,
    port: int,
    username: str = "",
    password: str | None = None,
    tls: bool = False,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    timeout: float = 3.0,
) -> RunningService | None:
    """The running daemon's answer to ``cmd/ping`` with its status; None when none answers."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    available, status_t = topic_path(device_id, "available"), topic_path(device_id, "status")
    client_name = f"doctor-{uuid.uuid4().hex[:8]}"
    reply_t = topic_path(device_id, f"reply/{client_name}/ping")
    got: dict[str, Any] = {}
    online, answered, subscribed = threading.Event(), threading.Event(), threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == available and msg.payload == b"online":
                online.set()
            elif msg.topic == status_t:
                got["status"] = json.loads(msg.payload)
            elif msg.topic == reply_t:
                got["reply"] = json.loads(msg.payload)
                answered.set()
        except ValueError:
            pass  # not ours to judge here; the daemon's own tests check its payloads

    client = mqtt_client(client_name, username, password, tls, ca_file, cert_file, key_file)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: (
        None if rc.is_failure else c.subscribe([(available, 1), (status_t, 1), (reply_t, 1)])
    )
    client.on_subscribe = lambda *a: subscribed.set()
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError):
        return None  # the broker check says why
    client.loop_start()
    try:
        # A retained `available` comes right after SUBACK: a second is plenty.
        if not (subscribed.wait(timeout) and online.wait(min(timeout, 1.0))):
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_t
        props.CorrelationData = client_name.encode()
        client.publish(topic_path(device_id, "cmd/ping"), b"{}", qos=1, properties=props)
        if not answered.wait(timeout):
            return None
    finally:
        client.disconnect()
        client.loop_stop()
    result = got["reply"].get("result", {}) if got["reply"].get("ok") else {}
    if not result.get("pong"):
        return None
    return RunningService(
        str(result.get("version", "?")), float(result.get("uptime_s", 0.0)), got.get("status", {})
    )
