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
        # the new probe's own settings are not a change made on it
        assert rec.wait_for(lambda: bench.daemon.pipeline.state.setting("depth_mm") == 40.0, 5)
        assert not [e for e in bench.events("manual_change") if e.get("source") == "probe"]
        reply = rec.request("set_param", {"param": "depth_mm", "value": 20})
        assert reply["ok"], reply
        assert probe.params["depth_mm"] == 20.0
        too_deep = rec.request("set_param", {"param": "depth_mm", "value": 120})
        assert not too_deep["ok"] and "[20.0, 40.0, 60.0]" in too_deep["error"], too_deep
    finally:
        bench.close()


def test_restoring_settings_after_a_reboot_raises_no_manual_change_on_the_probe(broker: LocalBroker) -> None:
    """The probe reboots to its power-on gain and depth; the link restores ours. Neither the frames at
    the power-on values nor those at the restored ones are a person's change: no manual_change event
    (each one pauses auto-tuning). The time sync left unanswered holds the restore back by the link's
    request timeout, so frames at the power-on values surely arrive first (the race made certain)."""
    import time

    probe = EmulatedProbe()
    bench = Bench(broker, probe, auto={"gain": False, "depth": False})
    try:
        rec = bench.recorder
        power_on = probe.params["gain_db"]
        assert rec.request("set_param", {"param": "gain_db", "value": power_on + 6})["ok"]
        assert rec.request("set_param", {"param": "depth_mm", "value": 80})["ok"]
        time.sleep(1.5)  # past the detector's grace for our own changes: frames at the new values
        before = len(bench.events("manual_change"))
        probe.emulator.faults.misbehave.add("no-time-sync")
        probe.emulator.faults.reboot_for_s = 1.5  # long enough for the link to notice (heartbeats)
        probe.emulator.faults.reboot_after_s = 0.0
        assert rec.wait_for(lambda: any("restored" in e["message"] for e in bench.events("info")), 15)
        assert probe.emulator.boots == 2
        assert rec.wait_for(lambda: probe.params["gain_db"] == power_on + 6, 5)
        assert probe.params["depth_mm"] == 80.0
        time.sleep(1.0)  # frames after the restore
        false_changes = [e for e in bench.events("manual_change")[before:] if e.get("source") == "probe"]
        assert false_changes == [], false_changes
        state = bench.daemon.pipeline.state
        assert state.setting("gain_db") == power_on + 6 and state.setting("depth_mm") == 80.0
    finally:
        bench.close()


def test_a_new_pty_without_the_stable_link_is_reported_as_such_not_as_no_frames(broker: LocalBroker) -> None:
    """The daemon configured with a raw /dev/pts/N; the emulator comes back on a new pty (another
    number) and nothing links the old name to it: status says the port is gone and why."""
    from firmware_bridge.emulator.device import ProbeEmulator
    from firmware_bridge.ptyport import PtyPair

    probe = EmulatedProbe()
    bench = Bench(broker, probe, auto={"gain": False, "depth": False})
    new_pty = PtyPair()  # taken while the old one exists: surely another number
    new_emulator = ProbeEmulator(new_pty.device_fd).start()
    try:
        rec = bench.recorder
        old_path = probe.pty.host_path
        assert new_pty.host_path != old_path and old_path.startswith("/dev/pts/")
        assert rec.wait_for(lambda: any(m.payload["probe"]["state"] == "ok" for m in rec.of("status")), 10)
        probe.emulator.stop()
        probe.pty.close()  # the old pty is gone

        def absent() -> list[dict]:
            return [m.payload for m in rec.of("status") if m.payload["probe"]["state"] == "absent"]

        assert rec.wait_for(lambda: bool(absent()), 10), [m.payload["probe"] for m in rec.of("status")][-3:]
        status = absent()[-1]
        assert status["probe"]["state"] != "no_frames"
        detail = status["probe"]["detail"]
        # Gone, or (another test's pty under xdist, or any program on a real device) the kernel handed
        # the same number out again at once: both are named for what they are.
        gone = f"{old_path} no longer exists" in detail and "pseudo-terminal" in detail
        reused = f"no probe answers on {old_path}" in detail and "handed out afresh" in detail
        assert gone or reused, detail
        assert "stable link path" in detail and detail in status["summary"], status
    finally:
        bench.close()
        new_emulator.stop()
        new_pty.close()
