"""The test bench itself: a real broker round trip, a real pty round trip, logging and the CLI."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import serial

from firmware_bridge.devicelog import device_logger
from firmware_bridge.ptyport import PtyPair
from service.daemon.logsetup import setup_logging
from service.tools.local_broker import LocalBroker, free_port


def _connected_client(broker: LocalBroker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(5), "no CONNACK from the real broker"
    return client


def test_publish_and_receive_through_real_mosquitto(broker: LocalBroker) -> None:
    received: list[tuple[str, bytes, int]] = []
    got = threading.Event()
    sub = _connected_client(broker, "sub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload, msg.qos))
        got.set()

    sub.on_message = on_message
    sub.subscribe("bench/+/hello", qos=1)
    assert subscribed.wait(5)
    pub = _connected_client(broker, "pub")
    pub.publish("bench/a/hello", b"\x00ultrasound\xff", qos=1).wait_for_publish(5)
    assert got.wait(5)
    assert received == [("bench/a/hello", b"\x00ultrasound\xff", 1)]
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()


def test_broker_restart_keeps_port_and_logs(start_broker) -> None:
    b = start_broker(name="restartable")
    port = b.port
    b.stop(kill=True)
    assert not b.running
    b.start()
    assert b.running and b.port == port
    assert "mosquitto version" in b.log_text()


def test_free_ports_are_distinct_bindable_and_outside_the_kernels_ephemeral_range() -> None:
    """An outgoing connection's source port comes from the ephemeral range and could take a port
    handed to a broker before the broker binds it; ports below that range cannot be taken so."""
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    if low > 20000:
        assert all(20000 <= p < low for p in ports), ports
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_bytes_round_trip_through_pty_with_pyserial(pty_pair: PtyPair) -> None:
    every_byte = bytes(range(256)) * 4
    with serial.Serial(pty_pair.host_path, baudrate=921600, timeout=1) as port:
        pty_pair.write_device(every_byte)
        assert port.read(len(every_byte)) == every_byte  # raw: no echo, no CR/LF translation
        port.write(every_byte[::-1])
        port.flush()
        assert pty_pair.read_device(len(every_byte), timeout=2) == every_byte[::-1]


def test_journal_format_is_one_line_key_value() -> None:
    stream = io.StringIO()
    handler = setup_logging(logging.INFO, fmt="journal", stream=stream)
    try:
        device_logger("firmware_bridge.link", "probe:ttyACM0").warning('lost "sync"\nresyncing')
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.startswith("level=WARNING logger=firmware_bridge.link device=probe:ttyACM0 ")
    assert 'msg="lost \\"sync\\"\\nresyncing"' in line


def test_human_format_has_device_prefix() -> None:
    stream = io.StringIO()
    handler = setup_logging(logging.INFO, fmt="human", stream=stream)
    try:
        device_logger("service.tracking", "camera:123").info("pose lost")
        logging.getLogger("service.x").debug("hidden")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "INFO    service.tracking: [camera:123] pose lost" in out
    assert "hidden" not in out


def test_cli_help_and_version() -> None:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run(
        [sys.executable, "-m", "service", "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("sonoguide ")
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0 and "advisory guidance" in out.stdout


def test_cli_parser_builds_with_the_standard_library_alone() -> None:
    # Command modules keep numpy, ONNX Runtime, librealsense (and tomli on 3.10) inside run(): the
    # parser, `--help` and `--version` work even in a venv whose packages are missing or broken.
    code = (
        "import sys; sys.path = [p for p in sys.path if 'site-packages' not in p]; "
        f"sys.path.insert(0, {os.getcwd()!r}); "
        "import service.cli as c; p = c.build_parser(); print(len(c.COMMANDS))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 10
