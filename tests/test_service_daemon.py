"""The daemon end to end with real pieces: real mosquitto, real paho clients, the real pipeline threads.

The probe side is tests/service_bench.SyntheticProbe (see there why), the model the HeuristicModel.
Every message the recorder receives is validated with jsonschema against docs/mqtt/*.schema.json.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service.config import Config, parse_config
from service.daemon import Daemon
from service.inference import HeuristicModel
from service.localbroker import LocalBroker
from tests.service_bench import Recorder, SyntheticProbe


def _config(port: int, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"device": {"id": f"test-{uuid.uuid4().hex[:8]}"}, "mqtt": {"port": port}}
    data.update(sections)
    return parse_config(data, "<test>", env={})


class Bench:
    def __init__(self, broker: LocalBroker, probe: SyntheticProbe, **sections: dict[str, Any]) -> None:
        self.config = _config(broker.port, **sections)
        self.probe = probe.start()
        self.recorder = Recorder(broker.port, self.config.device.id)
        self.daemon = Daemon(
            self.config, probe, HeuristicModel(), status_period_s=0.5, mqtt_reconnect_delay_s=(0.2, 1.0)
        )
        self.daemon.start()
        assert self.daemon.mqtt.wait_connected(5)

    def close(self) -> None:
        self.daemon.stop()
        self.probe.stop()
        self.recorder.close()

    def events(self, kind: str, param: str | None = None) -> list[dict[str, Any]]:
        return [
            m.payload
            for m in self.recorder.of("events")
            if m.payload["kind"] == kind and (param is None or m.payload.get("param") == param)
        ]


@pytest.fixture
def make_bench(broker: LocalBroker) -> Iterator[Any]:
    benches: list[Bench] = []

    def _make(probe: SyntheticProbe | None = None, **sections: dict[str, Any]) -> Bench:
        b = Bench(broker, probe or SyntheticProbe(), **sections)
        benches.append(b)
        return b

    yield _make
    for b in benches:
        b.close()
        assert not b.recorder.invalid, b.recorder.invalid


def test_guidance_at_frame_rate_retained_state_and_clean_exit(broker: LocalBroker, make_bench) -> None:
    bench = make_bench(auto={"gain": False, "depth": False})
    rec = bench.recorder
    assert rec.wait_for(lambda: len(rec.of("guidance")) >= 5, 5)
    t0 = time.monotonic()
    time.sleep(2.0)
    rate = len(rec.of("guidance", since=t0)) / (time.monotonic() - t0)
    assert rate >= 0.8 * bench.probe.fps, f"guidance at {rate:.1f}/s for a {bench.probe.fps} fps probe"
    g = rec.of("guidance")[-1]
    assert g.props.MessageExpiryInterval == 1 and not g.retain
    t = g.payload["t"]
    assert t["received"] <= t["preprocessed"] <= t["inferred"] <= t["guided"] <= t["published"]
    assert g.payload["basis"] == "assumed_marker_toward_head"  # no camera
    seqs = [m.payload["seq"] for m in rec.of("guidance")]
    assert seqs == sorted(seqs)

    # A late subscriber gets the retained state at once.
    late = Recorder(broker.port, bench.config.device.id)
    try:
        assert late.wait_for(
            lambda: {"available", "status", "settings"} <= {m.name for m in late.messages}, 5
        )
        retained = {m.name: m for m in late.messages if m.retain}
        assert retained["available"].payload == "online"
        assert (
            retained["settings"].payload["gain_db"] == 50.0
            and retained["settings"].payload["auto"]["gain"] is False
        )
        assert rec.wait_for(lambda: any(m.payload["health"] == "ok" for m in rec.of("status")), 5)
        status = [m for m in rec.of("status") if m.payload["health"] == "ok"][-1].payload
        assert status["camera"]["state"] == "none" and "image alone" in status["summary"]
        assert status["fps"] > 20 and status["model"]["name"] == "heuristic"
        bench.daemon.stop()
        assert late.wait_for(
            lambda: late.of("available") and late.of("available")[-1].payload == "stopped", 5
        )
    finally:
        late.close()


def test_auto_gain_converges_from_15_db_too_low(make_bench) -> None:
    probe = SyntheticProbe(gain_db=35.0, best_gain_db=50.0)
    bench = make_bench(probe, auto={"depth": False})
    assert bench.recorder.wait_for(lambda: abs(probe.params["gain_db"] - 50.0) < 2.0, 8), probe.params
    time.sleep(1.0)  # and it stays there: no oscillation
    assert abs(probe.params["gain_db"] - 50.0) < 2.0
    gains = [v for n, v in probe.set_calls if n == "gain_db"]
    assert gains == sorted(gains), f"gain went back and forth: {gains}"
    changes = bench.events("auto_change", "gain_db")
    assert changes and "too dark" in changes[0]["reason"] and changes[0]["source"] == "auto"
    assert bench.recorder.wait_for(
        lambda: bench.recorder.of("settings")[-1].payload["gain_db"] == probe.params["gain_db"], 3
    )


def test_depth_too_shallow_deepens(make_bench) -> None:
    probe = SyntheticProbe(depth_mm=60.0, structure_mm=110.0)
    bench = make_bench(probe, auto={"gain": False})
    assert bench.recorder.wait_for(lambda: probe.params["depth_mm"] >= 100.0, 8), probe.params
    changes = bench.events("auto_change", "depth_mm")
    assert changes[0]["old"] == 60.0 and changes[0]["new"] > 60.0 and "deeper" in changes[0]["reason"]
    times = [m.at for m in bench.recorder.of("events") if m.payload.get("param") == "depth_mm"]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))  # at most about once a second


def test_manual_change_pauses_auto_tuning(make_bench) -> None:
    probe = SyntheticProbe(gain_db=50.0, best_gain_db=50.0)
    bench = make_bench(probe, auto={"manual_pause_s": 2.0, "depth": False})
    time.sleep(0.5)
    probe.press_button("gain_db", 30.0)  # 20 dB too dark, set on the probe itself
    assert bench.recorder.wait_for(lambda: bench.events("manual_change", "gain_db"), 3)
    manual = bench.events("manual_change", "gain_db")[0]
    assert manual["source"] == "probe" and manual["new"] == 30.0
    time.sleep(1.5)
    assert probe.params["gain_db"] == 30.0 and not bench.events("auto_change", "gain_db")  # paused
    assert bench.recorder.wait_for(
        lambda: bench.events("auto_change", "gain_db"), 4
    )  # resumes after the pause

    # A display command is a manual change too.
    reply = bench.recorder.request("set_param", {"param": "gain_db", "value": 70})
    assert reply["ok"] and reply["result"] == {"param": "gain_db", "value": 70.0, "auto_paused_s": 2.0}
    n_auto = len(bench.events("auto_change", "gain_db"))
    time.sleep(1.0)
    assert probe.params["gain_db"] == 70.0 and len(bench.events("auto_change", "gain_db")) == n_auto
    assert any(m.payload["paused_s"]["gain"] > 0 for m in bench.recorder.of("settings"))


def test_commands_answer_and_garbage_gets_errors(make_bench) -> None:
    bench = make_bench(auto={"gain": False, "depth": False})
    rec = bench.recorder
    reply = rec.request("ping")
    assert reply["ok"] and reply["result"]["pong"] is True
    t0 = time.monotonic()
    bad = {
        "fly": (b"{}", "unknown command 'fly'"),
        "set_param": (b'{"param": "gain_db", "value": "loud"}', "value"),
        "set_auto": (b"not json", "not UTF-8 JSON"),
        "preset": (b'{"name": "brain"}', "unknown preset 'brain'"),
        "calibrate_camera": (b"{}", "no camera configured"),
        "reload_model": (b"{}", "reloading is not available"),
    }
    for command, (raw, fragment) in bad.items():
        reply = rec.request(command, raw=raw)
        assert reply["ok"] is False and fragment in reply["error"], reply
    reply = rec.request("set_param", {"param": "depth_mm", "value": 77})
    assert not reply["ok"] and "depth steps" in reply["error"]
    reply = rec.request("set_auto", {"param": "depth", "enabled": True})
    assert reply == {"ok": True, "command": "set_auto", "result": {"param": "depth", "enabled": True}}
    assert rec.wait_for(lambda: rec.of("settings")[-1].payload["auto"]["depth"] is True, 3)
    reply = rec.request("preset", {"name": "abdomen"})
    assert (
        reply["ok"] and bench.probe.params["depth_mm"] == 150.0 and bench.probe.params["frequency_mhz"] == 3.5
    )
    reply = rec.request("freeze", {"frozen": True})
    assert reply["ok"] and bench.probe.params["freeze"] is True
    reply = rec.request("capture")
    assert reply["ok"] and bench.events("capture")
    # The pipeline never noticed: guidance kept its rate through all of it.
    rate = len(rec.of("guidance", since=t0)) / (time.monotonic() - t0)
    assert rate > 20


def test_broker_killed_and_restarted(broker: LocalBroker, make_bench) -> None:
    bench = make_bench(auto={"gain": False, "depth": False})
    rec = bench.recorder
    assert rec.wait_for(lambda: len(rec.of("guidance")) > 10, 5)
    broker.stop(kill=True)  # a crash: retained messages are gone with it (no persistence)
    time.sleep(1.0)
    assert not bench.daemon.mqtt.connected
    assert bench.daemon.mqtt.publish_guidance({"seq": 0}) is False  # dropped, not queued
    broker.start()
    assert bench.daemon.mqtt.wait_connected(10), "daemon did not reconnect"
    late = Recorder(broker.port, bench.config.device.id)
    try:
        assert late.wait_for(
            lambda: {"available", "status", "settings"} <= {m.name for m in late.messages if m.retain}, 5
        )
        assert late.wait_for(lambda: len(late.of("guidance")) >= 10, 5), "guidance did not resume"
        assert not late.invalid
    finally:
        late.close()
    assert bench.daemon.mqtt.stats["connects"] >= 2
    assert all(t.is_alive() for t in bench.daemon.pipeline._threads)
