"""The emulator rendering with the real simulator: in-process on a pty, and as the CLI's default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.emulator import CallablePoseSource, ProbeEmulator, SimImageSource
from firmware_bridge.emulator.state import Capabilities
from firmware_bridge.link import ProbeLink
from firmware_bridge.ptyport import PtyPair
from sim.novice import on_skin
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.types import ImagingSettings

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def test_sim_source_renders_what_the_simulator_renders() -> None:
    src = SimImageSource("abdomen", seed=4, width=128, height=96)
    pose = src.emulator_pose(src.phantom.target_pose)
    assert pose.in_contact
    params = {"gain_db": 26.0, "depth_mm": 120.0, "freq_mhz": 3.5, "tgc_db": [0.0, 0.0, 0.0, 0.0]}
    img = src.render(params, pose, 0.0)
    assert img.dtype == np.uint8 and img.shape == (96, 128)
    # Frame 1 of the same phantom, pose and settings, straight from the simulator: the same pixels.
    expected = Scanner(src.phantom, size=(96, 128)).render(
        src.phantom.target_pose, ImagingSettings(26.0, 120.0, 3.5), 1
    )
    assert np.array_equal(img, expected)
    brighter = src.render({**params, "gain_db": 40.0}, pose, 0.0)
    assert np.median(brighter[brighter > 12]) > np.median(img[img > 12]) + 20  # 14 dB ≈ 60 grey levels
    lifted = src.emulator_pose(on_skin(src.phantom, src.phantom.target_pose, -10.0))
    assert not lifted.in_contact
    assert src.render(params, lifted, 0.0).mean() < 0.2 * img.mean()  # air under the probe
    caps = src.capabilities()
    assert caps["depths_mm"] == list(PRESETS["abdomen"].depth_steps_mm) and caps["gain_max"] == 60.0


def test_emulator_with_the_sim_behind_a_real_link(pty_pair: PtyPair) -> None:
    src = SimImageSource("abdomen", seed=2)
    caps = Capabilities(**src.capabilities())
    target = src.emulator_pose(src.phantom.target_pose)
    lifted = src.emulator_pose(on_skin(src.phantom, src.phantom.target_pose, -10.0))
    lift_at: list[float] = []  # the caller moves the probe: a pose stream from this test

    def pose_at(t: float):
        return lifted if lift_at and t >= lift_at[0] else target

    emu = ProbeEmulator(
        pty_pair.device_fd, src, CallablePoseSource(pose_at), caps, initial_params={"gain_db": 11.0}
    ).start()
    link = ProbeLink(pty_pair.host_path)
    events: list[dict] = []
    link.add_event_listener(events.append)
    try:
        link.start()
        assert link.info is not None and link.info.capabilities["depths_mm"] == caps.depths_mm
        assert link.info.capabilities["tgc_bands"] == 3
        frame = link.latest_frame(timeout=2.0)
        assert frame is not None and frame.image.shape == (256, 256)
        assert frame.params["gain_db"] == 11.0 and frame.params["depth_mm"] == 140.0  # preset's default
        assert frame.params["contact"] is True
        dark = float(frame.image.mean())  # 15 dB below the best gain: mostly black
        assert link.set_param("gain_db", 26.4) == 26.0  # snapped to the preset's 1 dB step
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = link.latest_frame(timeout=0.5)
            if f is not None and f.params["gain_db"] == 26.0:
                break
        assert f is not None and float(f.image.mean()) > dark + 12
        lift_at.append(time.monotonic() - emu._start_t)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e["type"] == "contact" for e in events):
            time.sleep(0.02)
        assert [e["value"] for e in events if e["type"] == "contact"] == [0.0]
    finally:
        link.stop()
        emu.stop()


def test_cli_uses_the_simulator_when_given_a_seed_and_takes_poses_on_stdin() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "probe-emulator", "--pty", "--seed", "5", "--gain", "12",
         "--pose", "stdin"],
        cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        path = proc.stdout.readline().strip()
        with ProbeLink(path) as link:
            assert link.info is not None
            assert link.info.capabilities["depths_mm"] == list(PRESETS["abdomen"].depth_steps_mm)
            frame = link.latest_frame(timeout=2.0)
            assert frame is not None and frame.params["gain_db"] == 12.0 and frame.params["contact"]
            # Lift the probe 20 mm off the skin: the image goes dark.
            src = SimImageSource("abdomen", seed=5)
            up = on_skin(src.phantom, src.phantom.target_pose, -20.0)
            line = {"position_mm": list(up.position_mm), "quaternion": list(up.quat_wxyz), "contact": False}
            proc.stdin.write(json.dumps(line) + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                f = link.latest_frame(timeout=0.5)
                if f is not None and not f.params["contact"]:
                    break
            assert f is not None and not f.params["contact"] and f.image.mean() < 5
    finally:
        proc.terminate()
        proc.wait(5)


def test_cli_refuses_a_start_setting_the_probe_does_not_offer() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "service", "probe-emulator", "--pty", "--preset", "abdomen", "--depth", "77"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and "depth_mm = 77" in r.stderr and "depths" in r.stderr


@pytest.mark.parametrize("preset", ["vascular", "cardiac"])
def test_other_presets_render(preset: str) -> None:
    src = SimImageSource(preset, seed=1, width=64, height=64)
    params = {**src.default_params(), "tgc_db": [0.0, 0.0, 0.0]}
    img = src.render(params, src.emulator_pose(src.phantom.target_pose), 0.0)
    assert img.shape == (64, 64) and img.std() > 5
