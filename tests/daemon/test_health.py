"""Hand-off slots, and sd_notify over a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from service.daemon.app import LOOP_STALL_S, Daemon
from service.daemon.handoff import LatestSlot
from service.daemon.health import HealthMonitor, SdNotifier
from service.daemon.inference import HeuristicModel
from tests.daemon.test_daemon import Bench
from tests.service_bench import EmulatedProbe


def test_slot_latest_wins_and_counts_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get(timeout=0) == 4 and slot.dropped == 4
    assert slot.get(timeout=0.05) is None


def test_slot_wakes_waiter_and_close_unblocks() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(slot.get(timeout=5)))
    t.start()
    time.sleep(0.05)
    slot.put("frame")
    t.join(2)
    assert got == ["frame"]
    t = threading.Thread(target=lambda: got.append(slot.get(timeout=120)))
    t.start()
    slot.close()
    t.join(30)
    assert not t.is_alive() and got[-1] is None  # woken by close, long before its timeout


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
        env_value = address
    else:
        name = f"sonoguide-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env_value = "@" + name
    sock.settimeout(0.02)
    yield sock, env_value
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out += sock.recv(4096).decode().split("\n")
        except (TimeoutError, socket.timeout):  # noqa: UP041 - py3.10
            return out


def test_ready_only_after_warmup_with_loops_running_frames_or_not(notify_socket) -> None:
    sock, address = notify_socket
    monitor = HealthMonitor(SdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}))
    assert monitor.tick(0.0, model_warm=False, loops_alive=True, status="starting") == ["STATUS=starting"]
    assert monitor.tick(0.5, model_warm=True, loops_alive=False, status="starting") == []
    assert monitor.tick(1.0, model_warm=True, loops_alive=True, status="probe frozen") == [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=probe frozen",
    ]
    assert _received(sock) == ["STATUS=starting", "READY=1", "WATCHDOG=1", "STATUS=probe frozen"]


def test_watchdog_only_while_the_loops_turn(notify_socket) -> None:
    sock, address = notify_socket
    monitor = HealthMonitor(SdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}))
    pings, received = [], []
    for i in range(40):  # 10 s, ticking every 0.25 s; a loop hangs at t = 4 s
        now = i * 0.25
        if "WATCHDOG=1" in monitor.tick(now, True, now < 4.0, "x"):
            pings.append(now)
        received += _received(sock)
    assert pings and max(pings) < 4.0  # no ping once a loop stopped turning
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(pings))
    assert received.count("WATCHDOG=1") == len(pings)


def test_no_socket_no_watchdog_is_harmless() -> None:
    n = SdNotifier({})
    assert not n.enabled and n.notify("READY=1") is False
    assert SdNotifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_a_frozen_probe_keeps_the_watchdog_fed_and_a_restart_finds_it_frozen(notify_socket, broker) -> None:
    """The real daemon on the emulator (pty) and mosquitto: a freeze longer than the watchdog interval
    is a state (status `frozen`), not a hang; a daemon started on a frozen probe becomes READY."""
    sock, address = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    probe = EmulatedProbe()
    bench = Bench(broker, probe, notifier=SdNotifier(env), auto={"gain": False, "depth": False})
    second: Daemon | None = None
    try:
        rec = bench.recorder
        assert _wait_for_field(sock, "READY=1", 10)
        probe.emulator.press_freeze()
        assert rec.wait_for(lambda: rec.of("settings")[-1].payload["frozen"] is True, 5)
        # Past the frame-stall time (status no longer says frames flow), the pings must go on.
        assert rec.wait_for(lambda: rec.of("status")[-1].payload["probe"]["state"] != "ok", 10)
        _received(sock)
        assert _wait_for_field(sock, "WATCHDOG=1", 10, count=4), "a frozen probe starved the watchdog"
        assert probe.params["frozen"]
        assert rec.of("status")[-1].payload["probe"]["state"] == "frozen"
        pipeline = bench.daemon.pipeline
        assert pipeline.stalled_loops(LOOP_STALL_S) == []  # the watchdog's proof: every loop turns
        bench.daemon.stop()
        assert rec.wait_for(lambda: len(pipeline.stalled_loops(0.5)) == 5, 5)  # stopped loops: stalled
        # systemd's restart: a new daemon on the still-frozen probe
        t = time.monotonic()
        second = Daemon(bench.config, probe.link, HeuristicModel(), status_period_s=0.5,
                        notifier=SdNotifier(env))  # fmt: skip
        second.start()
        assert _wait_for_field(sock, "READY=1", 10), "no READY from a daemon started on a frozen probe"
        assert rec.wait_for(lambda: bool(rec.of("status", since=t)), 10)
        assert rec.wait_for(lambda: rec.of("status")[-1].payload["probe"]["state"] == "frozen", 10)
        assert rec.of("settings", since=t)[-1].payload["frozen"] is True
    finally:
        if second is not None:
            second.stop()
        bench.close()


def _wait_for_field(sock: socket.socket, field: str, timeout: float, count: int = 1) -> bool:
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += _received(sock).count(field)
        if seen >= count:
            return True
    return False
