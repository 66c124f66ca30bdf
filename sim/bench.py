"""Throughput of the B-mode simulator, for `sonoguide bench` (``sim_fps``)."""

from __future__ import annotations

import time

import numpy as np

from sim.phantom import make_phantom
from sim.scanner import Scanner


def frames_per_second(
    seconds: float = 2.0, preset: str = "abdomen", size: tuple[int, int] = (256, 256)
) -> float:
    """Frames per second rendering ``size`` B-mode frames of a moving probe (poses change every frame,
    settings fixed) on the calling thread. Pin BLAS/OpenMP to one thread to measure one core."""
    ph = make_phantom(preset, 0)
    sc = Scanner(ph, size=size)
    settings = ph.preset.default
    sc.render(ph.target_pose, settings, 0)  # build the per-settings caches outside the timing
    frames = 0
    start = time.perf_counter()
    while True:
        wobble = np.array([np.sin(frames * 0.1) * 5.0, np.cos(frames * 0.07) * 3.0, 0.0])
        sc.render(ph.target_pose.apply_motion(wobble, [0.0, 0.0, frames * 0.2 % 10]), settings, frames)
        frames += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and frames >= 3:
            return frames / elapsed
