"""The emulator's frame cache: a loop of real simulator frames, re-rendered per settings, over a real pty."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.bench import start_emulator_process
from firmware_bridge.emulator import FrameCache, SimImageSource
from firmware_bridge.emulator.framecache import MAX_SETTINGS, settings_key
from firmware_bridge.link import ProbeLink

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"gain_db": 30.0, "depth_mm": 120.0, "freq_mhz": 3.5, "tgc_db": [0.0, 0.0, 0.0]}


def test_cache_replays_the_loop_and_renders_once_per_settings() -> None:
    src = SimImageSource("abdomen", seed=3, width=64, height=48)
    path = src.scripted_path()
    cache = FrameCache(src, path, frames=3, fps=30.0)
    first = [cache.render(PARAMS, path.pose_at(99.0), 99.0) for _ in range(3)]
    assert cache.rendered == 3
    again = [cache.render(PARAMS, path.pose_at(0.0), 0.0) for _ in range(3)]
    assert cache.rendered == 3  # the second pass came from memory
    assert all(a is b for a, b in zip(first, again, strict=True))
    # Frame i is the simulator's image at the scripted pose of i / fps, whatever the caller's pose.
    fresh = SimImageSource("abdomen", seed=3, width=64, height=48)
    assert np.array_equal(first[0], fresh.render(PARAMS, path.pose_at(0.0), 0.0))
    assert not np.array_equal(first[0], first[2])  # the probe moves along the loop
    brighter = cache.render({**PARAMS, "gain_db": 45.0}, path.pose_at(0.0), 0.0)
    assert cache.rendered == 4 and brighter.mean() > first[1].mean() + 10  # new settings, new image
    with pytest.raises(ValueError):
        brighter[0, 0] = 1  # shared by every pass: read-only


def test_cache_keeps_only_the_newest_settings() -> None:
    src = SimImageSource("abdomen", seed=3, width=32, height=32)
    cache = FrameCache(src, src.scripted_path(), frames=1, fps=30.0)
    for k in range(MAX_SETTINGS + 1):
        cache.render({**PARAMS, "gain_db": 20.0 + k}, src.scripted_path().pose_at(0), 0)
    assert len(cache._loops) == MAX_SETTINGS
    assert settings_key({**PARAMS, "gain_db": 20.0}) not in cache._loops  # the oldest went first
    assert settings_key(PARAMS) != settings_key({**PARAMS, "tgc_db": [0.0, 1.0, 0.0]})


def test_cache_rejects_bad_sizes() -> None:
    src = SimImageSource("abdomen", seed=3, width=32, height=32)
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        FrameCache(src, src.scripted_path(), frames=0, fps=30.0)
    with pytest.raises(ValueError, match="fps"):
        FrameCache(src, src.scripted_path(), frames=4, fps=0.0)


def test_cli_streams_the_loop_through_a_real_link_and_rerenders_after_a_change() -> None:
    proc, path = start_emulator_process(
        "--fps", "60", "--preset", "abdomen", "--seed", "1", "--frame-cache", "4", "--size", "96x64"
    )
    try:
        with ProbeLink(path, name="fc") as link:
            frames = []
            deadline = time.monotonic() + 10
            while len(frames) < 9 and time.monotonic() < deadline:
                f = link.latest_frame(timeout=0.2)
                if f is not None:
                    frames.append(f)
            assert len(frames) == 9
            by_id = {f.frame_id: f.image for f in frames}
            ids = sorted(by_id)
            pairs = [(i, i + 4) for i in ids if i + 4 in by_id]
            assert pairs, f"no two frames 4 apart among {ids}"
            for a, b in pairs:
                assert np.array_equal(by_id[a], by_id[b])  # a loop of 4
            assert link.set_param("gain_db", 50.0) == 50.0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                f = link.latest_frame(timeout=0.2)
                if f is not None and f.params["gain_db"] == 50.0:
                    assert not any(np.array_equal(f.image, img) for img in by_id.values())
                    break
            else:
                pytest.fail("no frame at the new gain")
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frame-cache", "0", "--seed", "1"], "1..1000"),
        (["--frame-cache", "4", "--seed", "1", "--pose", "stdin"], "--pose stdin"),
    ],
)
def test_cli_refuses_bad_cache_options(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "probe-emulator", "--pty", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
