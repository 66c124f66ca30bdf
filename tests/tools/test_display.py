"""The reference display (service/display) in a real headless Chromium, driven by Selenium with the
system chromedriver, on a real mosquitto with a WebSocket listener and the real daemon
(`python -m service run`) on the reference probe emulator (a real pty).

Every message the page receives is recorded by the page (``record=1``) and checked here against the
JSON Schemas in docs/mqtt/. Screenshots at phone and tablet sizes go to build/test-artifacts/display/
(``SONOGUIDE_UPDATE_SCREENSHOTS=1`` also writes them to docs/images/ for docs/display.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from firmware_bridge.emulator import CallablePoseSource, ProbeEmulator, SimImageSource
from firmware_bridge.emulator.state import Capabilities
from firmware_bridge.ptyport import PtyPair
from service.commands.demo import DEVICE_ID, demo_config
from service.tools.display_server import DisplayServer
from service.tools.local_broker import LocalBroker
from sim.novice import random_start_pose
from tests.browser import ARTIFACTS, Page, wait_until
from tests.service_bench import SCHEMAS, Recorder

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"phone": (412, 915), "tablet": (820, 1180)}  # CSS pixels of a common phone and tablet

pytestmark = pytest.mark.slow


class Bench:
    """Broker (MQTT + WebSockets), the probe emulator on a pty, the daemon process, the display server."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = LocalBroker(workdir=workdir / "broker", name="display-broker", websocket=True).start()
        self.source = SimImageSource("abdomen", 3)
        self.phantom = self.source.phantom
        self.away = self.source.emulator_pose(random_start_pose(self.phantom, 3))
        self.on_target = self.source.emulator_pose(self.phantom.target_pose)
        self.pose = self.away
        self.caps = Capabilities(**self.source.capabilities(), fps=15.0)
        self.pty = PtyPair()
        self.emulator = ProbeEmulator(
            self.pty.device_fd, self.source, CallablePoseSource(lambda t: self.pose), self.caps,
            initial_params=self.source.default_params(),
        ).start()  # fmt: skip
        self.config = workdir / "config.toml"
        self.config.write_text(demo_config(self.pty.host_path, self.broker.port))
        self.daemon: subprocess.Popen[bytes] | None = None
        self.server = DisplayServer().start()
        self.recorder = Recorder(self.broker.port, DEVICE_ID)

    def start_daemon(self) -> None:
        log = (self.workdir / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "--config", str(self.config)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(15)
        self.daemon = None
        return code

    def daemon_log(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.recorder.close()
        self.server.stop()
        self.emulator.stop()
        self.pty.close()
        self.broker.close()


def record_figure(name: str, value: float) -> None:
    """A measured figure for docs/display.md, written next to the screenshots (not asserted)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=1) + "\n")


def schema_problems(messages: list[dict[str, Any]]) -> list[str]:
    """Each received message against its topic's JSON Schema in docs/mqtt/ (replies: the command's)."""
    problems = []
    for m in messages:
        if m["name"] == "reply":
            body = json.loads(m["text"])
            path = SCHEMAS / f"cmd-{body.get('command', '?')}.response.schema.json"
        else:
            body = m["text"] if m["name"] == "available" else json.loads(m["text"])
            path = SCHEMAS / f"{m['name'].replace('/', '-')}.schema.json"
        if not path.is_file():
            problems.append(f"{m['name']}: no schema {path.name}")
            continue
        schema = json.loads(path.read_text())
        problems += [
            f"{m['name']}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(body)
        ]
    return problems


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    b = Bench(tmp_path_factory.mktemp("display"))
    try:
        b.start_daemon()
        online = b.recorder.wait_for(
            lambda: any(m.payload == "online" for m in b.recorder.of("available")), 60
        )
        assert online, f"the daemon did not come online\n{b.daemon_log()}"
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def page(bench: Bench) -> Iterator[Page]:
    url = bench.server.page_url(bench.broker.ws_url, DEVICE_ID, record="1")
    p = Page(url, SIZES["phone"])
    try:
        yield p
        p.drain()
        assert p.received, "the page recorded no message"
        problems = schema_problems(p.received)
        assert problems == [], problems[:20]
    finally:
        p.close()


def test_the_page_shows_the_instruction_the_daemon_publishes_and_the_quality_meter_moves(
    bench: Bench, page: Page
) -> None:
    rec = bench.recorder
    wait_until("current guidance on the page", lambda: page.read()["state"] == "current")
    by_seq = lambda: {m.payload["seq"]: m.payload for m in rec.of("guidance")}  # noqa: E731
    lags = []
    for _ in range(5):
        # The page catches up with the newest instruction the daemon published by now...
        newest = rec.of("guidance")[-1]
        latest = newest.payload["seq"]
        shown = wait_until(
            f"the page to show guidance seq >= {latest}",
            lambda latest=latest: (s := page.read())["seq"] and int(s["seq"]) >= latest and s,
        )
        lags.append(time.monotonic() - newest.at)  # an upper bound: includes our polling
        # ...and shows exactly what that message says, drawn as that instruction.
        message = wait_until(
            "the recorder to hold the shown seq", lambda s=shown: by_seq().get(int(s["seq"]))
        )
        assert shown["instruction"] == message["text"] and shown["drawn"] == message["instruction"]
        assert shown["state"] == "current" and shown["stale"] == ""
        assert abs(float(shown["quality"]) - message["quality"]) < 1e-3
    assert rec.invalid == [], rec.invalid[:5]
    record_figure("page_caught_up_with_newest_guidance_s_max", round(max(lags), 3))

    far_quality = float(page.read()["quality"])
    bench.pose = bench.on_target  # the probe onto the standard view: the image's quality rises
    wait_until(
        f"the quality meter to move from {far_quality:.2f}",
        lambda: abs(float(page.read()["quality"] or far_quality) - far_quality) >= 0.2,
        timeout=40,
    )
    page.drain()


def _settings(bench: Bench) -> dict[str, Any]:
    return bench.recorder.of("settings")[-1].payload


def _response(page: Page, starts: str) -> dict[str, Any]:
    return wait_until(
        f"a response to {starts!r} on the page",
        lambda: (
            (s := page.read())["response"].lstrip("✔⚠ ").startswith(starts)
            and s["responseState"] != "pending"
            and s
        ),
    )


def test_freeze_auto_and_gain_from_the_page_change_the_probe_and_a_refusal_shows_its_error(
    bench: Bench, page: Page
) -> None:
    emulator = bench.emulator
    page.click("freeze")
    shown = _response(page, "freeze")
    assert shown["responseState"] == "ok" and "image frozen" in shown["response"], shown
    wait_until("settings frozen = true", lambda: _settings(bench)["frozen"] is True)
    assert emulator.params.snapshot()["frozen"] is True  # the probe itself is frozen
    # A frozen probe sends no frames, so guidance stops: the last one expires (1 s) and the page says
    # so while the device is still online, instead of showing it as current.
    shown = wait_until(
        "expired guidance shown as stale", lambda: (s := page.read())["state"] == "stale" and s
    )
    assert "no guidance for" in shown["stale"] and shown["available"] == "online", shown
    page.click("freeze")  # the button now unfreezes
    assert "image live" in _response(page, "unfreeze")["response"]
    wait_until("settings frozen = false", lambda: _settings(bench)["frozen"] is False)
    assert emulator.params.snapshot()["frozen"] is False

    page.click("gain-auto")  # auto gain off, so that only our presses move the gain
    assert _response(page, "auto gain off")["responseState"] == "ok"
    wait_until("auto gain off in settings", lambda: _settings(bench)["auto"]["gain"] is False)
    wait_until("MANUAL on the page", lambda: page.read()["gainMode"] == "MANUAL")
    # An automatic change already on its way when auto went off may still land: start from a gain the
    # probe and the daemon agree on and that held for half a second.
    held: list[float] = []

    def gain_settled() -> bool:
        now = (_settings(bench)["gain_db"], emulator.params.snapshot()["gain_db"])
        held.append(now[0] if now[0] == now[1] else float("nan"))
        return len(held) >= 10 and len(set(held[-10:])) == 1 and held[-1] == held[-1]  # 10 polls: 0.5 s

    wait_until("the gain settled", gain_settled)
    before = held[-1]
    page.click("gain-up")
    shown = _response(page, "gain +")
    expected = before + 3 * bench.caps.gain_step
    assert shown["responseState"] == "ok" and f"{expected:g} dB" in shown["response"], shown
    wait_until(f"settings gain_db = {expected}", lambda: _settings(bench)["gain_db"] == expected)
    assert emulator.params.snapshot()["gain_db"] == expected  # what the probe is set to
    wait_until("the new gain on the page", lambda: page.read()["gain"] == f"{expected:g} dB")

    top = bench.caps.gain_max
    assert bench.recorder.request("set_param", {"param": "gain_db", "value": top})["ok"]
    wait_until("gain at the probe's maximum", lambda: _settings(bench)["gain_db"] == top)
    page.click("gain-up")
    shown = _response(page, "gain + refused")
    assert shown["responseState"] == "error" and f"maximum is {top:g} dB" in shown["response"], shown
    assert emulator.params.snapshot()["gain_db"] == top
    page.click("gain-auto")
    assert _response(page, "auto gain on")["responseState"] == "ok"

    page.driver.execute_script("document.getElementById('flash').classList.remove('on')")
    page.click("capture")  # the capture event flashes the screen (only a capture event does)
    assert _response(page, "capture")["responseState"] == "ok"
    # Not "the last event is the capture": auto gain, just turned on, may post a change after it.
    wait_until("the capture flash", lambda: page.driver.execute_script(
        "return document.getElementById('flash').classList.contains('on')"
    ))  # fmt: skip
    page.click("preset")  # the selected exam preset (abdomen), as a manual change
    shown = _response(page, "preset abdomen")
    assert shown["responseState"] == "ok", shown
    page.drain()


def test_screenshots_at_phone_and_tablet_sizes(bench: Bench, page: Page) -> None:
    bench.pose = bench.away  # an instruction with an arrow makes the better picture
    wait_until("current guidance", lambda: page.read()["state"] == "current")
    for name, size in SIZES.items():
        page.driver.set_window_size(*size)
        wait_until(
            f"{name} layout", lambda size=size: page.driver.execute_script("return innerWidth") <= size[0]
        )
        layout = page.driver.execute_script(
            "return {scroll: document.documentElement.scrollWidth, inner: innerWidth,"
            " type: parseFloat(getComputedStyle(document.getElementById('instruction')).fontSize),"
            " tall: document.documentElement.scrollHeight, chrome: outerHeight - innerHeight}"
        )
        assert layout["scroll"] <= layout["inner"], f"{name}: the page is wider than the screen {layout}"
        assert layout["type"] >= 32, f"{name}: the instruction is in {layout['type']} px type"
        # The whole page in one picture: the window as tall as the content, the width of the device.
        page.driver.set_window_size(size[0], max(size[1], layout["tall"] + layout["chrome"]))
        page.driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)  # let one more guidance message paint: a picture, not a timing check
        path = page.screenshot(name)
        assert path.stat().st_size > 10_000
    page.driver.set_window_size(*SIZES["phone"])
    page.drain()


def test_offline_when_the_daemon_is_killed_and_stopped_after_a_clean_stop(bench: Bench, page: Page) -> None:
    wait_until("online on the page", lambda: page.read()["available"] == "online")
    killed_at = time.monotonic()
    bench.stop_daemon(signal.SIGKILL)
    wait_until("offline on the page (the daemon's last will)", lambda: page.read()["available"] == "offline")
    record_figure("offline_on_page_after_kill_s", round(time.monotonic() - killed_at, 3))
    shown = wait_until(
        "the last guidance shown as stale", lambda: (s := page.read())["state"] == "stale" and s
    )
    assert "STALE" in shown["stale"] and "offline" in shown["stale"]
    bench.start_daemon()
    wait_until("online again", lambda: page.read()["available"] == "online", timeout=60)
    wait_until("current guidance again", lambda: page.read()["state"] == "current")
    assert bench.stop_daemon(signal.SIGTERM) == 0
    shown = wait_until("stopped on the page", lambda: (s := page.read())["available"] == "stopped" and s)
    wait_until("guidance stale after the stop", lambda: page.read()["state"] == "stale")
    page.drain()


def test_the_vendored_mqtt_client_is_the_pinned_npm_package_and_the_page_uses_no_cdn() -> None:
    from service.display import STATIC_DIR, VENDORED_MQTT_JS

    lock = json.loads((ROOT / "scripts" / "node" / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/mqtt"]["version"]
    installed = ROOT / "scripts" / "node" / "node_modules" / "mqtt"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned
    assert VENDORED_MQTT_JS.read_bytes() == (installed / "dist" / "mqtt.min.js").read_bytes(), (
        "service/display/static/vendor/mqtt.min.js differs from the pinned mqtt package: "
        "cp scripts/node/node_modules/mqtt/dist/mqtt.min.js service/display/static/vendor/"
    )
    for page_file in STATIC_DIR.glob("*.*"):
        text = page_file.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, (
            f"{page_file.name} loads something from outside the device"
        )


def test_sonoguide_display_serves_the_app_and_prints_its_address() -> None:
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "display", "--port", "0", "--device", "dev-7", "--duration", "30"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("display: http://127.0.0.1:") and "device=dev-7" in line, line
        url = line.split(" ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=10) as page:
            assert "sonoguide display" in page.read().decode()
        with urllib.request.urlopen(url.split("?")[0] + "vendor/mqtt.min.js", timeout=10) as lib:
            assert lib.read(200).startswith(b'"use strict";var mqtt=')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run(
        [sys.executable, "-m", "service", "display", "--broker", "mqtt://127.0.0.1:1883"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "must be a ws:// or wss:// URL" in bad.stderr
