"""The shipped broker configuration, run for real: the display's TLS listeners (MQTT and secure
WebSockets) with passwords and ACL, the loopback WebSocket listener, and the bridge to a site broker. Two real mosquitto instances; throwaway certificates from openssl."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.daemon.config import MqttConfig
from service.mqtt.client import MqttApi
from service.tools.display_server import DisplayServer
from service.tools.local_broker import LocalBroker, free_port
from tests.browser import Page, wait_until

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "systemd" / "mosquitto"
DEVICE = "sonoguide-01"
ROOT = f"sonoguide/{DEVICE}"


def render(text: str, replacements: dict[str, str]) -> str:
    """Template a shipped config for the test; every placeholder must be there (no silent drift)."""
    for old, new in replacements.items():
        assert old in text, f"the shipped config no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate for the bridge."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make test certificates (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    for name, cn, ext in [
        ("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("bridge", DEVICE, "extendedKeyUsage=clientAuth"),
    ]:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d,
        )  # fmt: skip
    shutil.copy(d / "ca.crt", d / "site-ca.crt")
    return d


class Recorder:
    """A real MQTT client that records (topic, payload) and can wait for a given message."""

    def __init__(self, port: int, client_id: str, transport: str = "tcp", **tls: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.response_topics: dict[bytes, str] = {}  # payload -> MQTT 5 response topic it carried
        self._cond = threading.Condition()
        self.connect_rc: mqtt.ReasonCode | None = None
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, transport=transport
        )
        if tls.get("username"):
            self.client.username_pw_set(tls["username"], tls.get("password"))
        if tls.get("ca"):
            self.client.tls_set(ca_certs=tls["ca"])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.port = port

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        self.connect_rc = rc
        self._connected.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            response_topic = getattr(msg.properties, "ResponseTopic", None)
            if response_topic:
                self.response_topics[bytes(msg.payload)] = response_topic
            self._cond.notify_all()

    def connect(self, timeout: float = 5.0) -> bool:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self._connected.wait(timeout), "no CONNACK"
        assert self.connect_rc is not None
        return not self.connect_rc.is_failure

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, response_topic: str = "") -> None:
        props = None
        if response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (topic, payload) not in self.messages:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _device_broker_config(pki: Path, tls_port: int, ws_port: int = 0, wss_port: int = 0) -> str:
    return render(
        (CONF_DIR / "sonoguide-local.conf").read_text(),
        {
            "listener 1883 127.0.0.1": "listener {port} 127.0.0.1",
            "listener 9001 127.0.0.1\n": f"listener {ws_port or free_port()} 127.0.0.1\n",
            "listener 8883\n": f"listener {tls_port} 127.0.0.1\n",
            "listener 8884\n": f"listener {wss_port or free_port()} 127.0.0.1\n",
            "/etc/mosquitto/sonoguide/": f"{pki}/",
        },
    )


@dataclass
class DeviceBroker:
    broker: LocalBroker
    tls_port: int
    ws_port: int
    wss_port: int


@pytest.fixture
def device_broker(pki: Path, start_broker: Callable[..., LocalBroker]) -> DeviceBroker:
    """The device broker with the shipped listener config, ACL and a password file for display-1."""
    shutil.copy(CONF_DIR / "sonoguide.acl", pki / "acl")
    passwd = pki / "passwd"
    passwd.unlink(missing_ok=True)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "display-1", "s3cret"], check=True)
    tls_port, ws_port, wss_port = free_port(), free_port(), free_port()
    config = _device_broker_config(pki, tls_port, ws_port, wss_port)
    return DeviceBroker(start_broker(config=config, name="device"), tls_port, ws_port, wss_port)


@pytest.fixture
def display_broker(device_broker: DeviceBroker) -> tuple[LocalBroker, int]:
    return device_broker.broker, device_broker.tls_port


def test_display_reads_guidance_and_status_and_sends_commands_nothing_else(
    pki: Path, display_broker: tuple[LocalBroker, int], clients: list[Recorder]
) -> None:
    broker, tls_port = display_broker
    daemon = Recorder(broker.port, "daemon")
    display = Recorder(tls_port, "display-1", username="display-1", password="s3cret", ca=str(pki / "ca.crt"))
    clients += [daemon, display]
    assert daemon.connect() and display.connect()
    daemon.subscribe("sonoguide/#")
    display.subscribe("#")

    for topic in ["guidance", "status", "available", "settings", "events", "frame", "reply/display-1/r1",
                  "reply/display-2/r1", "cmd/set_gain"]:  # fmt: skip
        daemon.publish(f"{ROOT}/{topic}", b"x")
    daemon.publish("other/topic", b"x")
    daemon.publish(f"{ROOT}/status", b"end")  # after everything else: once it arrives, all has
    assert display.wait_for(f"{ROOT}/status", b"end")
    assert display.topics() == {
        f"{ROOT}/{t}" for t in ["guidance", "status", "available", "settings", "events", "reply/display-1/r1"]
    }

    for topic in ["guidance", "status", "settings", "events", "reply/display-2/r1", "reply/display-1/r1",
                  "cmd/set_gain", "cmd/set_gain/display-2", "cmd/set_gain/display-1"]:  # fmt: skip
        display.publish(f"{ROOT}/{topic}", b"from-display")
    display.publish("other/topic", b"from-display")
    display.publish(f"{ROOT}/cmd/ping/display-1", b"end")
    assert daemon.wait_for(f"{ROOT}/cmd/ping/display-1", b"end")
    from_display = {t for t, p in daemon.messages if p == b"from-display"}
    # Commands only in its own name, and its own reply namespace: where the daemon may answer it.
    assert from_display == {f"{ROOT}/cmd/set_gain/display-1", f"{ROOT}/reply/display-1/r1"}


def test_tls_listener_refuses_clients_without_credentials(
    pki: Path, display_broker: tuple[LocalBroker, int], clients: list[Recorder]
) -> None:
    broker, tls_port = display_broker
    daemon = Recorder(broker.port, "daemon")
    clients.append(daemon)
    assert daemon.connect()
    daemon.subscribe(f"{ROOT}/cmd/#")
    ca = str(pki / "ca.crt")
    for name, creds in [
        ("anonymous", {}),
        ("wrong-password", {"username": "display-1", "password": "guess"}),
    ]:
        intruder = Recorder(tls_port, name, ca=ca, **creds)
        clients.append(intruder)
        assert not intruder.connect(), f"{name} client was accepted on the TLS listener"
        assert intruder.connect_rc is not None and intruder.connect_rc.value in (0x86, 0x87, 0x04, 0x05)
        intruder.client.publish(f"{ROOT}/cmd/set_gain", b"intruder", qos=1)
    # A legitimate display's command after the intruders' shows the listener works and theirs never came.
    display = Recorder(tls_port, "display-1", username="display-1", password="s3cret", ca=ca)
    clients.append(display)
    assert display.connect()
    display.publish(f"{ROOT}/cmd/ping/display-1", b"ok")
    assert daemon.wait_for(f"{ROOT}/cmd/ping/display-1", b"ok")
    assert (f"{ROOT}/cmd/set_gain", b"intruder") not in daemon.messages
    # Plain MQTT on the TLS port is no way round it.
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    plain.username_pw_set("display-1", "s3cret")
    try:
        with pytest.raises(OSError):
            plain.connect("127.0.0.1", tls_port)
            plain.loop(timeout=2)
            plain.loop(timeout=2)
            if not plain.is_connected():
                raise OSError("no plain-text CONNACK on the TLS listener")
    finally:
        sock = plain.socket()
        if sock is not None:
            sock.close()


def test_secure_websocket_listener_has_the_tls_listeners_rights_and_refuses_strangers(
    pki: Path, device_broker: DeviceBroker, clients: list[Recorder]
) -> None:
    ca = str(pki / "ca.crt")
    daemon = Recorder(device_broker.broker.port, "daemon")
    display = Recorder(
        device_broker.wss_port, "display-1", "websockets", username="display-1", password="s3cret", ca=ca
    )
    anonymous = Recorder(device_broker.wss_port, "anon", "websockets", ca=ca)
    clients += [daemon, display, anonymous]
    assert daemon.connect() and display.connect()
    assert not anonymous.connect(), "an anonymous client was accepted on the secure WebSocket listener"
    daemon.subscribe(f"{ROOT}/#")
    display.subscribe("#")
    for topic in ["frame", "reply/display-2/r1", "settings", "guidance"]:
        daemon.publish(f"{ROOT}/{topic}", b"x")
    assert display.wait_for(f"{ROOT}/guidance", b"x")
    assert display.topics() == {f"{ROOT}/settings", f"{ROOT}/guidance"}
    display.publish(f"{ROOT}/guidance", b"from-display")
    display.publish(f"{ROOT}/cmd/ping/display-1", b"end")
    assert daemon.wait_for(f"{ROOT}/cmd/ping/display-1", b"end")
    assert (f"{ROOT}/guidance", b"from-display") not in daemon.messages


def test_loopback_websocket_listener_serves_an_anonymous_local_display(
    device_broker: DeviceBroker, clients: list[Recorder]
) -> None:
    daemon = Recorder(device_broker.broker.port, "daemon")
    local_display = Recorder(device_broker.ws_port, "kiosk", "websockets")
    clients += [daemon, local_display]
    assert daemon.connect() and local_display.connect()
    local_display.subscribe(f"{ROOT}/#")
    daemon.publish(f"{ROOT}/guidance", b"slide")
    assert local_display.wait_for(f"{ROOT}/guidance", b"slide")
    conf = (CONF_DIR / "sonoguide-local.conf").read_text()
    assert "listener 9001 127.0.0.1\nprotocol websockets\n" in conf  # loopback only, as shipped


def test_bridge_carries_status_and_events_up_and_commands_down_never_guidance_or_frames(
    pki: Path, start_broker: Callable[..., LocalBroker], clients: list[Recorder]
) -> None:
    site_tls = free_port()
    site = start_broker(
        config=(
            "per_listener_settings true\n"
            "listener {port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {site_tls} 127.0.0.1\n"
            f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
            "require_certificate true\nuse_identity_as_username true\n"
        ),
        name="site",
    )
    bridge = render(
        (CONF_DIR / "sonoguide-bridge.conf").read_text(),
        {"site-broker.example.org:8883": f"127.0.0.1:{site_tls}", "/etc/mosquitto/sonoguide/": f"{pki}/"},
    )
    device = start_broker(config=_device_broker_config(pki, free_port()) + bridge, name="device")
    up = Recorder(site.port, "site-app")
    local = Recorder(device.port, "daemon")
    clients += [up, local]
    assert up.connect() and local.connect()
    up.subscribe("sonoguide/#")
    local.subscribe("sonoguide/#")

    # The bridge connects in the background: probe both directions until each crosses once.
    deadline = time.monotonic() + 15
    crossed_up = crossed_down = False
    while not (crossed_up and crossed_down):
        assert time.monotonic() < deadline, f"the bridge did not connect\n{device.log_text()[-3000:]}"
        if not crossed_up:
            local.publish(f"{ROOT}/status", b"probe")
            crossed_up = up.wait_for(f"{ROOT}/status", b"probe", timeout=0.5)
        if not crossed_down:
            up.publish(f"{ROOT}/cmd/ping/site", b"probe")
            crossed_down = local.wait_for(f"{ROOT}/cmd/ping/site", b"probe", timeout=0.5)

    for topic in ["guidance", "frame", "frames/0", "settings", "status", "events", "available",
                  "reply/display-1/r1", "reply/site/r1"]:  # fmt: skip
        local.publish(f"{ROOT}/{topic}", b"from-device")
    local.publish(f"{ROOT}/status", b"end")
    assert up.wait_for(f"{ROOT}/status", b"end")
    went_up = {t for t, p in up.messages if p == b"from-device"}
    assert went_up == {f"{ROOT}/{t}" for t in ["status", "events", "available", "reply/site/r1"]}

    for topic in ["cmd/set_gain", "cmd/set_gain/display-1", "cmd/set_gain/site", "guidance", "status",
                  "settings", "frame", "reply/display-1/r1"]:  # fmt: skip
        up.publish(f"{ROOT}/{topic}", b"from-site")
    up.publish(f"{ROOT}/cmd/ping/site", b"end", response_topic=f"{ROOT}/reply/site/42")
    assert local.wait_for(f"{ROOT}/cmd/ping/site", b"end")
    came_down = {t for t, p in local.messages if p == b"from-site"}
    assert came_down == {f"{ROOT}/cmd/set_gain/site"}  # only in the site's own name
    # MQTT 5 across the bridge: the command keeps its response topic, so the reply can find its way up.
    assert local.response_topics.get(b"end") == f"{ROOT}/reply/site/42"


@pytest.fixture
def clients() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for c in made:
        c.close()


def shipped_listeners() -> dict[int, dict[str, str]]:
    """port -> the listener's settings in the shipped device config (bind address, protocol, TLS)."""
    listeners: dict[int, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (CONF_DIR / "sonoguide-local.conf").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            current = {"bind": words[2] if len(words) > 2 else "", "protocol": "mqtt"}
            listeners[int(words[1])] = current
        elif current:
            current[words[0]] = " ".join(words[1:])
    return listeners


def test_the_api_documents_servers_are_the_shipped_listeners() -> None:
    from service.mqtt.docs import SERVERS

    listeners = shipped_listeners()
    assert len(listeners) == len(SERVERS)
    for name, server in SERVERS.items():
        host, port = server["host"].rsplit(":", 1)
        listener = listeners[int(port)]
        websocket = server["protocol"] in ("ws", "wss")
        secure = server["protocol"] in ("secure-mqtt", "wss")
        assert (listener["protocol"] == "websockets") == websocket, name
        assert ("certfile" in listener) == secure == (listener["allow_anonymous"] == "false"), name
        assert (listener["bind"] == "127.0.0.1") == (host == "127.0.0.1"), name


def _login(page: Page, password: str) -> None:
    """The display asks for the password (it is never in the address): fill in the form and submit."""
    wait_until("the page's login form", lambda: page.driver.find_element("id", "connect-form").is_displayed())
    page.driver.find_element("css selector", "#connect-form input[name=password]").send_keys(password)
    page.driver.find_element("css selector", "#connect-form button[type=submit]").click()


def _state(page: Page) -> dict[str, Any]:
    return dict(page.driver.execute_script(
        "return {connection: document.getElementById('connection').dataset.state,"
        " available: document.getElementById('availability').dataset.state}"
    ))  # fmt: skip


def test_the_display_in_a_browser_logs_in_over_secure_websockets_and_a_wrong_password_does_not(
    pki: Path, device_broker: DeviceBroker, clients: list[Recorder]
) -> None:
    daemon = Recorder(device_broker.broker.port, "daemon")
    clients.append(daemon)
    assert daemon.connect()
    daemon.client.publish(f"{ROOT}/available", b"online", qos=1, retain=True).wait_for_publish(5)
    broker_url = f"wss://127.0.0.1:{device_broker.wss_port}"
    # The throwaway CA is not in the browser's store; the certificate itself is the shipped listener's.
    with DisplayServer() as server:
        url = server.page_url(broker_url, DEVICE, username="display-1")
        pages = [Page(url, (412, 915), "--ignore-certificate-errors") for _ in range(2)]
        try:
            good, bad = pages
            _login(good, "s3cret")
            _login(bad, "guess")
            wait_until(
                "connected and online",
                lambda: _state(good) == {"connection": "connected", "available": "online"},
            )
            wait_until(
                "the refused login shown", lambda: _state(bad)["connection"] in ("error", "disconnected")
            )
            assert _state(bad)["available"] == "unknown"  # it heard nothing from the device
            # A command from the logged-in page goes out in its account's name and is answered in
            # its reply namespace: the daemon's real MQTT side behind the shipped ACL.
            api = MqttApi(DEVICE, MqttConfig(port=device_broker.broker.port), lambda n, r: {"frame_id": 7})
            api.start()
            try:
                assert api.wait_connected(10)
                good.click("capture")
                wait_until("the capture answered", lambda: "capture: done" in good.read()["response"])
                assert api.stats["commands"] == 1 and api.stats["replies_refused"] == 0
            finally:
                api.stop()
        finally:
            for page in pages:
                page.close()
