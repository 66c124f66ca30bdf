"""The daemon's MQTT side (the real MqttApi and CommandHandler) behind the shipped device broker
config and ACL, with a display over TLS: replies go only where the requester may publish itself,
and retained commands are refused and cleared. Real mosquitto, real TLS, real paho clients."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.daemon.config import MqttConfig
from service.daemon.mqtt_commands import CommandHandler
from service.mqtt.client import MqttApi
from tests.deploy import test_broker as shipped
from tests.deploy.test_broker import DEVICE, ROOT, DeviceBroker, Recorder

# The shipped device broker (config, ACL, password for display-1) and its throwaway PKI.
pki = shipped.pki
device_broker = shipped.device_broker
clients = shipped.clients


@pytest.fixture
def daemon_api(device_broker: DeviceBroker) -> Iterator[MqttApi]:
    handler = CommandHandler(pipeline=None)  # type: ignore[arg-type]  # ping needs no pipeline
    api = MqttApi(DEVICE, MqttConfig(port=device_broker.broker.port), handler, reconnect_delay_s=(0.2, 1.0))
    api.start()
    assert api.wait_connected(10)
    yield api
    api.stop()


def _display(pki: Path, port: int, clients: list[Recorder], user: str = "display-1") -> Recorder:
    display = Recorder(port, user, username=user, password="s3cret", ca=str(pki / "ca.crt"))
    clients.append(display)
    assert display.connect()
    display.subscribe("#")  # everything the ACL lets it read
    return display


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_replies_go_only_to_the_requesters_own_namespace(
    pki: Path, device_broker: DeviceBroker, daemon_api: MqttApi, clients: list[Recorder]
) -> None:
    observer = Recorder(device_broker.broker.port, "observer")  # sees everything on the device broker
    clients.append(observer)
    assert observer.connect()
    observer.subscribe("#")
    display = _display(pki, device_broker.tls_port, clients)

    own = f"{ROOT}/reply/display-1/r1"
    display.publish(f"{ROOT}/cmd/ping/display-1", b"{}", response_topic=own)
    assert _wait(lambda: any(t == own for t, _ in display.messages)), "no reply in the display's namespace"
    reply = json.loads(next(p for t, p in display.messages if t == own))
    assert reply["ok"] and reply["result"]["pong"] is True

    hostile = "x" * 1000
    targets = ["guidance", "status", "available", "events", "settings", "reply/display-2/r1", "cmd/ping"]
    for target in [f"{ROOT}/{t}" for t in targets] + ["other/topic", f"{ROOT}/reply/display-1"]:
        display.publish(f"{ROOT}/cmd/{hostile}/display-1", b"{}", response_topic=target)
        display.publish(f"{ROOT}/cmd/ping/display-1", b"{}", response_topic=target)
    # In another display's name, or bare: the shipped ACL stops it before it reaches the daemon.
    display.publish(f"{ROOT}/cmd/ping/display-2", b"{}", response_topic=f"{ROOT}/reply/display-2/r1")
    display.publish(f"{ROOT}/cmd/ping", b"{}", response_topic=f"{ROOT}/reply/display-2/r1")
    assert _wait(lambda: daemon_api.stats["replies_refused"] >= 2 * 9)
    display.publish(f"{ROOT}/cmd/ping/display-1", b"{}", response_topic=f"{ROOT}/reply/display-1/end")
    assert _wait(lambda: any(t == f"{ROOT}/reply/display-1/end" for t, _ in observer.messages))
    from_daemon = [(t, p) for t, p in observer.messages if b"pong" in p or b"command" in p]
    assert {t for t, _ in from_daemon} == {own, f"{ROOT}/reply/display-1/end"}, from_daemon
    assert daemon_api.stats["replies_refused"] == 2 * 9
    assert daemon_api.stats["commands"] == 2  # the misdirected ones were not run either


def test_retained_command_from_a_display_is_refused_and_cleared(
    pki: Path, device_broker: DeviceBroker, daemon_api: MqttApi, clients: list[Recorder]
) -> None:
    display = _display(pki, device_broker.tls_port, clients)
    topic = f"{ROOT}/cmd/set_param/display-1"
    info = display.client.publish(topic, b'{"param": "gain_db", "value": 0}', qos=1, retain=True)
    info.wait_for_publish(5)
    assert _wait(lambda: daemon_api.stats["retained_refused"] >= 1)
    assert daemon_api.stats["commands"] == 0
    # A fresh subscriber (a restarted daemon) finds nothing retained there any more.
    late = Recorder(device_broker.broker.port, "late")
    clients.append(late)
    assert late.connect()
    late.subscribe(f"{ROOT}/cmd/#")
    time.sleep(1.0)  # retained messages follow SUBACK at once; there is no event for "none came"
    assert [p for t, p in late.messages if t == topic and p] == []
