"""Hand-off slots, and sd_notify over a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from service.daemon.handoff import LatestSlot
from service.daemon.health import HealthMonitor, SdNotifier


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


def test_ready_only_after_warmup_and_first_frame(notify_socket) -> None:
    sock, address = notify_socket
    monitor = HealthMonitor(SdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}))
    assert monitor.tick(0.0, model_warm=False, last_frame_time=None, status="starting") == ["STATUS=starting"]
    assert monitor.tick(0.5, model_warm=True, last_frame_time=None, status="starting") == []
    assert monitor.tick(1.0, model_warm=True, last_frame_time=0.99, status="ok") == [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=ok",
    ]
    assert _received(sock) == ["STATUS=starting", "READY=1", "WATCHDOG=1", "STATUS=ok"]


def test_watchdog_only_while_frames_flow(notify_socket) -> None:
    sock, address = notify_socket
    monitor = HealthMonitor(SdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}), stall_s=2.0)
    pings, received = [], []
    for i in range(40):  # 10 s, ticking every 0.25 s; frames stop at t = 4 s
        now = i * 0.25
        last_frame = min(now, 4.0)
        if "WATCHDOG=1" in monitor.tick(now, True, last_frame, "x"):
            pings.append(now)
        received += _received(sock)
    assert pings and max(pings) <= 6.0  # no ping once frames stalled for more than stall_s
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(pings))
    assert received.count("WATCHDOG=1") == len(pings)


def test_no_socket_no_watchdog_is_harmless() -> None:
    n = SdNotifier({})
    assert not n.enabled and n.notify("READY=1") is False
    assert SdNotifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
