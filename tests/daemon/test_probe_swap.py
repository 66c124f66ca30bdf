"""A different probe on the same port while the daemon runs (real pty, two emulators, mosquitto)."""

from __future__ import annotations

import dataclasses

from service.tools.local_broker import LocalBroker
from tests.daemon.test_daemon import Bench
from tests.service_bench import EmulatedProbe


def test_a_probe_swapped_on_the_same_port_gets_its_own_limits_and_no_old_settings(
    broker: LocalBroker,
) -> None:
    """The emulator replaced by another probe (serial, depth steps) on the same pty, daemon running."""
    from firmware_bridge.emulator.device import ProbeEmulator
    from firmware_bridge.emulator.poses import CallablePoseSource

    probe = EmulatedProbe()
    bench = Bench(broker, probe, auto={"gain": False, "depth": False})
    try:
        rec = bench.recorder
        assert rec.request("set_param", {"param": "depth_mm", "value": 120})["ok"]
        refused = rec.request("set_param", {"param": "depth_mm", "value": 20})
        assert not refused["ok"] and "depth steps" in refused["error"]
        other = dataclasses.replace(probe.caps, serial="EMU0002", depths_mm=[20.0, 40.0, 60.0])
        probe.emulator.stop()
        probe.emulator = ProbeEmulator(
            probe.pty.device_fd,
            probe.source,
            CallablePoseSource(lambda t: probe.pose),
            other,
            initial_params={"depth_mm": 40.0},
        ).start()
        assert rec.wait_for(
            lambda: any("different probe" in e["message"] for e in bench.events("warning")), 20
        )
        assert rec.wait_for(lambda: bench.probe.link.connected, 10)
        assert 120.0 not in probe.host_sets("depth_mm")  # the old probe's depth was not restored
        reply = rec.request("set_param", {"param": "depth_mm", "value": 20})
        assert reply["ok"], reply
        assert probe.params["depth_mm"] == 20.0
        too_deep = rec.request("set_param", {"param": "depth_mm", "value": 120})
        assert not too_deep["ok"] and "[20.0, 40.0, 60.0]" in too_deep["error"], too_deep
    finally:
        bench.close()
