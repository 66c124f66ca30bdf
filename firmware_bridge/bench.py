"""Link throughput benchmark: the emulator in its own process, the host link measured in this one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firmware_bridge.link import ProbeLink

REPO_ROOT = Path(__file__).resolve().parent.parent


def start_emulator_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m service probe-emulator --pty ARGS``; returns the process and the pty path it printed."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "probe-emulator", "--pty", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    if not path:
        proc.kill()
        raise RuntimeError(f"probe-emulator exited with {proc.wait()} before printing its pty path")
    return proc, path


def link_throughput(seconds: float = 5.0, fps: float = 120.0, size: str = "256x256") -> dict[str, Any]:
    """Stream for ``seconds`` at ``fps``; returns received fps, lost frames and this process's CPU share."""
    proc, path = start_emulator_process("--fps", str(fps), "--size", size)
    try:
        with ProbeLink(path, name="bench") as link:
            time.sleep(0.3)  # settle: first frames, time sync
            s0, c0, w0 = link.stats(), time.process_time(), time.monotonic()
            consumed = 0
            while time.monotonic() - w0 < seconds:
                if link.latest_frame(timeout=0.1) is not None:
                    consumed += 1
            s1, c1, w1 = link.stats(), time.process_time(), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(5)
    wall = w1 - w0
    frames = s1["frames_ok"] - s0["frames_ok"]
    return {
        "seconds": round(wall, 3),
        "target_fps": fps,
        "fps": round(frames / wall, 2),
        "frames": frames,
        "consumed": consumed,
        "lost": s1["frames_lost"] - s0["frames_lost"],
        "crc_errors": s1["crc_errors"] - s0["crc_errors"],
        "mbytes_per_s": round((s1["bytes_rx"] - s0["bytes_rx"]) / wall / 1e6, 2),
        "cpu_fraction": round((c1 - c0) / wall, 4),
    }
