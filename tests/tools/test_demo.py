"""The live view (pure rendering), `sonoguide watch` against a real broker and daemon, and the demo's
acceptance: `python -m service demo --duration 15 --broker-port P` seen by real `mosquitto_sub`s."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from service.commands.watch import parse_broker
from service.daemon.app import Daemon
from service.daemon.config import parse_config
from service.daemon.inference import HeuristicModel
from service.policy.guidance import VOCABULARY
from service.tools.local_broker import LocalBroker, free_port, wait_for_port
from service.tools.view import ViewState, render_line, render_view
from tests.service_bench import EmulatedProbe

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

GUIDANCE = {
    "seq": 41, "frame_id": 900, "instruction": "slide_head", "text": "Slide toward the head 12 mm",
    "magnitude": 12.0, "unit": "mm", "confidence": 0.8, "quality": 0.45, "target_visible": 0.3,
    "contact": 0.95, "basis": "assumed_marker_toward_head", "frozen": False,
    "t": {"device_us": 1, "received": 10.0, "preprocessed": 10.001, "inferred": 10.004, "guided": 10.005,
          "published": 10.012},
}  # fmt: skip
SETTINGS = {
    "gain_db": 26.0, "depth_mm": 120.0, "freq_mhz": 3.5, "auto": {"gain": True, "depth": False},
    "paused_s": {"gain": 8.0, "depth": 0.0}, "frozen": False,
}  # fmt: skip


def _msg(body: object) -> bytes:
    return json.dumps(body).encode()


def test_view_state_and_rendering_are_pure_and_say_what_happens() -> None:
    state = ViewState(device="dev-1")
    assert "waiting for guidance" in render_view(state, now=0.0)
    assert state.update("sonoguide/dev-1/available", b"online", 0.0)
    assert state.update("sonoguide/dev-1/settings", _msg(SETTINGS), 0.0)
    auto = {"seq": 1, "time": 1.0, "kind": "auto_change", "message": "gain_db 12 -> 16: image too dark by 14 dB",
            "param": "gain_db", "old": 12.0, "new": 16.0, "reason": "image too dark by 14 dB", "source": "auto"}  # fmt: skip
    assert state.update("sonoguide/dev-1/events", _msg(auto), 1.0)
    for i in range(31):  # 30 frames a second for one second
        assert state.update("sonoguide/dev-1/guidance", _msg(GUIDANCE), 2.0 + i / 30)
    assert not state.update("sonoguide/other/guidance", _msg({**GUIDANCE, "text": "Rotate clockwise"}), 3.0)
    assert not state.update("sonoguide/dev-1/cmd/ping", b"{}", 3.0)  # requests are not the daemon's
    assert not state.update("sonoguide/dev-1/status", b"\xff not json", 3.0)
    text = render_view(state, now=3.0)
    assert "device dev-1 (online)" in text and ">> Slide toward the head 12 mm" in text
    assert "confidence 0.80" in text and "quality [#########...........] 0.45" in text
    assert "gain 26 dB (auto, paused 8 s)" in text and "depth 120 mm (manual)" in text
    assert "last auto change: gain_db 12 -> 16: image too dark by 14 dB (2 s ago)" in text
    assert "guidance 30.0/s" in text and "latency 12 ms" in text and "Rotate" not in text
    assert "(stale)" in render_view(state, now=5.0)  # no guidance for 2 s: not shown as current
    line = render_line(state, now=3.0)
    assert "\n" not in line and "\x1b" not in line + text
    assert "Slide toward the head 12 mm" in line and "gain 26 dB depth 120 mm" in line and "30.0/s" in line
    status = {"captures": {"enabled": True, "saved": 3, "sent": 1, "queued": 2, "oldest_unsent_s": 41.0,
                           "pacs": "down", "exam": "open"}}  # fmt: skip
    assert state.update("sonoguide/dev-1/status", _msg(status), 3.0)
    assert "captures: 0   saved 3, sent 1, queued 2 (oldest 41 s), PACS down, exam open" in render_view(
        state, now=3.0
    )


def test_parse_broker_urls() -> None:
    assert parse_broker("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884, False)
    assert parse_broker("mqtts://display.local") == ("display.local", 8883, True)
    assert parse_broker("localhost") == ("localhost", 1883, False)
    for bad, fragment in (("http://x", "scheme"), ("mqtt://x:99999", "port"), ("mqtt://:1883", "no host")):
        with pytest.raises(ValueError, match=fragment):
            parse_broker(bad)


def test_watch_shows_what_a_running_daemon_publishes(broker: LocalBroker) -> None:
    probe = EmulatedProbe(gain_offset_db=-15.0)
    device = f"watch-{uuid.uuid4().hex[:6]}"
    config = parse_config({"device": {"id": device}, "mqtt": {"port": broker.port}}, "<test>", env={})
    daemon = Daemon(config, probe.link, HeuristicModel(), status_period_s=0.5).start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "service", "watch", "--broker", broker.url, "--device", device,
             "--duration", "3"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        daemon.stop()
        probe.close()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()  # not a terminal: one plain line a second
    assert 3 <= len(lines) <= 6 and all("\x1b" not in line for line in lines)
    last = lines[-1]
    assert last.startswith(f"[{device} online]")
    assert any(words in last for words in VOCABULARY.values())
    # the last auto change and its reason: gain now converges in one coarse step, so a later depth
    # change may be the last one shown
    assert "image too dark" in out.stdout or "target needs a" in out.stdout
    rate = re.search(r"\| ([0-9.]+)/s latency ([0-9]+) ms \|", last)  # how fast: `sonoguide bench`
    assert rate is not None and float(rate.group(1)) > 0, last


def _lines(stream: IO[str], into: list[tuple[float, str]]) -> threading.Thread:
    def read() -> None:
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path: the demo's camera socket lives in it, and a Unix
    socket's path is limited to 107 bytes (pytest's own folders under xdist come close)."""
    path = Path(tempfile.mkdtemp(prefix="sgdemo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_publishes_guidance_and_stops_cleanly(short_tmp: Path) -> None:
    tmp_path = short_tmp
    port = free_port()
    env = dict(ENV, TMPDIR=str(tmp_path))
    demo = subprocess.Popen(
        [sys.executable, "-m", "service", "demo", "--duration", "8", "--broker-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    subs: list[subprocess.Popen[str]] = []
    guidance: list[tuple[float, str]] = []
    available: list[tuple[float, str]] = []
    try:
        assert wait_for_port(port, timeout=10), "the demo's broker did not come up"
        for topic, into in (("sonoguide/+/guidance", guidance), ("sonoguide/+/available", available)):
            sub = subprocess.Popen(
                [shutil.which("mosquitto_sub") or "mosquitto_sub", "-p", str(port), "-t", topic, "-v", "-V", "mqttv5"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            subs.append(sub)
            assert sub.stdout is not None
            _lines(sub.stdout, into)
        # The first line is the reference display's address, served while the demo runs.
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert first.startswith("display: http://127.0.0.1:"), first
        page_url = first.split(" ", 1)[1].strip()
        with urllib.request.urlopen(page_url, timeout=10) as page:
            assert page.status == 200 and "sonoguide display" in page.read().decode()
        assert "broker=ws%3A%2F%2F127.0.0.1%3A" in page_url and "device=demo" in page_url
        stdout, stderr = demo.communicate(timeout=45)
    finally:
        if demo.poll() is None:
            demo.kill()
        for sub in subs:
            sub.terminate()
            sub.wait(5)
    assert demo.returncode == 0, stderr
    assert "demo over:" in stdout
    # The simulated RealSense was calibrated on the stickers before the probe went on the patient.
    assert re.search(r"camera: calibrated from \d+ frames, residual 0\.\d+ mm", stdout), stdout
    times = [t for t, line in guidance if line.startswith("sonoguide/demo/guidance {")]
    assert len(times) > 30, f"only {len(times)} guidance messages"  # the rate is `sonoguide bench`'s
    json.loads(guidance[-1][1].split(" ", 1)[1])  # whole JSON messages
    values = [line.split(" ", 1)[1] for _, line in available]
    assert values[0] == "online" and values[-1] == "stopped", values
    assert not list(tmp_path.glob("sonoguide-demo-*")), "the demo left its temporary folder behind"


def test_the_demos_capture_lands_in_the_patients_study_on_the_local_pacs(short_tmp: Path) -> None:
    """As at the bedside: an exam opened with a non-ASCII patient name, a capture from the display's
    button (cmd/capture), and the demo's daemon writes it as DICOM and sends it to the real local
    Orthanc it started, which the summary counts; the file reads back with the exam's patient."""
    import pydicom

    port = free_port()
    captures = short_tmp / "caps"
    env = dict(ENV, TMPDIR=str(short_tmp))
    demo = subprocess.Popen(
        [sys.executable, "-m", "service", "demo", "--duration", "25", "--broker-port", str(port),
         "--captures", str(captures), "--plain"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_for_port(port, timeout=10), "the demo's broker did not come up"
        exam = [sys.executable, "-m", "service", "exam", "--broker", f"mqtt://127.0.0.1:{port}",
                "--device", "demo", "--timeout", "3", "start", "--patient-id", "DEMO-42",
                "--patient-name", "Müller^Jörg"]  # fmt: skip
        deadline, opened = time.monotonic() + 40, None
        while time.monotonic() < deadline:  # the daemon answers once the camera is calibrated
            opened = subprocess.run(exam, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
            if opened.returncode == 0:
                break
        assert opened is not None and opened.returncode == 0, opened and (opened.stdout + opened.stderr)
        pub = shutil.which("mosquitto_pub") or "mosquitto_pub"
        subprocess.run([pub, "-p", str(port), "-t", "sonoguide/demo/cmd/capture", "-m", "{}", "-V", "mqttv5"],
                       check=True, timeout=10)  # fmt: skip
        stdout, stderr = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, stderr
    summary = re.search(r"(\d+) DICOM capture\(s\) in (\S+), (\d+) in the local PACS", stdout)
    assert summary, stdout
    on_device, in_pacs = int(summary.group(1)), int(summary.group(3))
    assert on_device >= 1 and in_pacs == on_device, summary.group(0)  # nothing lost, nothing twice
    files = sorted(captures.rglob("*.dcm"))
    assert len(files) == on_device
    ds = [pydicom.dcmread(f) for f in files]
    ours = [d for d in ds if d.PatientID == "DEMO-42"]
    assert ours, [d.PatientID for d in ds]
    d = ours[0]
    assert str(d.PatientName) == "Müller^Jörg" and d.SpecificCharacterSet == "ISO_IR 192"
    assert d.Modality == "US" and d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
    assert d.pixel_array.ndim == 2 and d.pixel_array.max() > 0  # the probe's frame, not an empty one
