"""The camera arm's pose source through the real tracking chain (``sonoguide eval --tracking full``).

Per frame the simulated RealSense frame of the novice's true pose (``sim.camera.render_camera``, with
a hand crossing the line of sight now and then, as the recordings have it) goes through the daemon's
own ``detect_markers`` → ``fit_probe`` → the sticker calibration made at the episode's start with the
probe parked away from the stickers (the chain of :mod:`service.tools.evaluate.tracking_errors`, where
the tracker model's figures were measured). It answers ``pose_at`` as :class:`SimTracker` does, so the
two can be run on the same episodes: the model of the tracker (fixed figures, fast) must agree with
the real chain (slow: ~30 ms a frame) within noise (docs/evaluation.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.tools.evaluate.simdevice import PoseHistory
from service.tools.evaluate.tracking_errors import calibrate_parked, chain_pose, parked_on
from sim.camera import FPS, _occluder_track, default_camera, render_camera
from sim.phantom import Phantom
from sim.types import Pose

OCCLUSION_TRACK_S = 120.0  # the hand's passes are drawn for this long (longer than any episode)


class RenderedTracker:
    def __init__(self, phantom: Phantom, seed: int) -> None:
        self.phantom = phantom
        self.seed = seed
        self.camera = default_camera(seed)
        self.calibration = calibrate_parked(phantom, self.camera, seed)
        rng = np.random.default_rng([int(seed), 0x0CC])  # as sim.camera.write_recording
        self._occluders = _occluder_track(
            self.camera, parked_on(phantom), rng, round(OCCLUSION_TRACK_S * FPS)
        )
        self.history = PoseHistory()
        self._frame = 0
        self.state = "searching"
        self.frames = 0
        self.tracked = 0

    def observe(self, true_pose: Pose, host_time: float) -> None:
        k = min(round(host_time * FPS), len(self._occluders) - 1)
        rgb, depth = render_camera(
            self.phantom, true_pose, self.camera, self._frame, self.seed, self._occluders[k]
        )
        self._frame += 1
        pose = chain_pose(rgb, depth, self.camera.intrinsics, self.calibration)
        self.history.add(host_time, pose)
        self.frames += 1
        self.tracked += pose is not None
        self.state = "tracking" if pose is not None else "lost"

    def pose_at(self, host_time: float) -> Any:
        return self.history.at(host_time)
