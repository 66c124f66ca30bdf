"""The benchmark's processes: the emulator on a pty, the daemon with a notify socket, a subscriber.

Everything is a real process talking over the real pty and a real mosquitto; measurements are taken
from outside the daemon (its /proc entries, its sd_notify datagrams, its MQTT output).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from service.tools.benchmark.stats import cpu_seconds_from_stat, rss_mb_from_status

REPO_ROOT = Path(__file__).resolve().parents[3]
DEVICE_ID = "bench"
PROBE_TOPIC = "sonoguide-bench/probe"


def child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)


FRAME_CACHE = 32  # emulator loop length: real simulator images, streamed faster than it renders


def start_emulator(fps: float, size: str = "256x256") -> tuple[subprocess.Popen[str], str]:
    """``python -m service probe-emulator --pty --fps F --preset abdomen --seed 1 --frame-cache N``:
    simulator images (what the model is made for) from a pre-rendered loop, so the emulator is not the
    bottleneck. Returns the process and its pty path."""
    from firmware_bridge.bench import start_emulator_process

    return start_emulator_process(
        "--fps", f"{fps:g}", "--size", size, "--preset", "abdomen", "--seed", "1",
        "--frame-cache", str(FRAME_CACHE),
    )  # fmt: skip


def camera_section(camera_socket: str = "", calibration: str = "") -> str:
    """The ``[camera]`` keys: the camera emulator's socket and calibration file, or no camera."""
    if not camera_socket:
        return 'source = "none"\n'
    return f'source = "emulator"\nsocket = "{camera_socket}"\ncalibration = "{calibration}"\n'


def write_config(
    folder: Path,
    port_path: str,
    broker_port: int,
    auto: bool = True,
    camera_socket: str = "",
    calibration: str = "",
) -> Path:
    """The daemon's config; with ``camera_socket``, the camera emulator's socket and its calibration."""
    path = folder / "bench.toml"
    flag = "true" if auto else "false"
    path.write_text(
        f'[device]\nid = "{DEVICE_ID}"\n\n[probe]\nport = "{port_path}"\n\n'
        f"[camera]\n{camera_section(camera_socket, calibration)}\n"
        f'[model]\nproviders = ["cpu"]\n\n[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n\n'
        f"[auto]\ngain = {flag}\ndepth = {flag}\n"
    )
    return path


class Subscriber:
    """A paho client on the device's guidance topic; keeps (CLOCK_MONOTONIC at arrival, message)."""

    def __init__(self, broker_port: int) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []  # guidance
        self.probes: list[tuple[float, dict[str, Any]]] = []  # BrokerProbe messages
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"sonoguide/{DEVICE_ID}/guidance", 0), (PROBE_TOPIC, 0)]
        )
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise RuntimeError("benchmark subscriber could not subscribe to the broker")

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic()  # first thing: the arrival time is what we measure
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            (self.probes if msg.topic == PROBE_TOPIC else self.messages).append((at, body))

    def take(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            out, self.messages = self.messages, []
        return out

    def take_probes(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            out, self.probes = self.probes, []
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class BrokerProbe:
    """The MQTT floor: a paho client (``loop_start``, like the daemon) publishing ``{"t": {"published":
    now}}`` on a probe topic at ``hz`` from its own thread, while the subscriber above receives it.
    Its latency is what the broker, two paho network threads and the scheduler cost with no daemon."""

    def __init__(self, broker_port: int, hz: float = 30.0) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(1.0 / hz,), name="broker-probe", daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.client.publish(PROBE_TOPIC, json.dumps({"t": {"published": time.monotonic()}}), qos=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.client.loop_stop()
        self.client.disconnect()


class DaemonProcess:
    """``python -m service run --config FILE`` with a NOTIFY_SOCKET we own (READY=1 ends cold start)."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.notify_path = workdir / f"notify-{uuid.uuid4().hex[:6]}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.log_path = workdir / "daemon.log"
        self._log = self.log_path.open("ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            env=child_env(NOTIFY_SOCKET=str(self.notify_path), OMP_NUM_THREADS="1"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from process start to READY=1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {self.log_tail()}")
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic() - self.started
        raise RuntimeError(f"the daemon sent no READY=1 within {timeout:g} s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return cpu_seconds_from_stat(stat, os.sysconf("SC_CLK_TCK"))

    def rss_mb(self) -> float:
        return rss_mb_from_status(Path(f"/proc/{self.proc.pid}/status").read_text())

    def log_tail(self, n: int = 1500) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()
        self.notify_path.unlink(missing_ok=True)
        self._log.close()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
