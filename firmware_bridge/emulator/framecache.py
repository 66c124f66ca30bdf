"""A short loop of pre-rendered frames, so the emulator can stream faster than the simulator renders.

``FrameCache(source, frames=N, fps=F)`` wraps any :class:`~firmware_bridge.emulator.images.ImageSource`.
Frame *i* of the loop is rendered at the pose the scripted path has at ``i / F`` seconds, with the
device's settings at the time. The loop is kept per settings (gain, depth, frequency, TGC): after a
change each loop position is rendered once, on first use (so the device thread never stalls long
enough to miss a heartbeat; the first pass after a change runs at the simulator's speed), then every
later pass streams from memory. Only the newest few settings are kept.

For benchmarks of the host side (``sonoguide probe-emulator --preset P --seed S --frame-cache N``):
the images are real simulator images at the right settings, but the probe motion repeats every N
frames and follows the scripted path only, never a live pose.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from firmware_bridge.emulator.images import ImageSource
from firmware_bridge.emulator.poses import Pose, PoseSource

MAX_SETTINGS = 4  # loops kept: flipping between two gains must not re-render every time


def settings_key(params: dict[str, Any]) -> tuple[float, ...]:
    """What the image depends on besides the pose: gain, depth, frequency and the TGC curve."""
    tgc = tuple(round(float(v), 3) for v in params.get("tgc_db", ()))
    base = tuple(round(float(params.get(k, 0.0)), 3) for k in ("gain_db", "depth_mm", "freq_mhz"))
    return base + tgc


class FrameCache:
    """An :class:`ImageSource` that replays ``frames`` pre-rendered images per settings, in a loop."""

    def __init__(self, source: ImageSource, poses: PoseSource, frames: int, fps: float) -> None:
        if not 1 <= frames <= 1000:
            raise ValueError(f"frame cache size must be within 1..1000 frames, got {frames}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.source = source
        self.width, self.height = source.width, source.height
        self.frames = frames
        self._poses = [(i / fps, poses.pose_at(i / fps)) for i in range(frames)]
        self._loops: OrderedDict[tuple[float, ...], list[np.ndarray | None]] = OrderedDict()
        self._position = 0
        self.rendered = 0  # images rendered by the wrapped source (for tests and logs)

    def render(self, params: dict[str, Any], pose: Pose, t: float) -> np.ndarray:
        """The next image of the loop at ``params``; ``pose`` and ``t`` are the loop's, not the caller's."""
        key = settings_key(params)
        loop = self._loops.get(key)
        if loop is None:
            loop = [None] * self.frames
            self._loops[key] = loop
            while len(self._loops) > MAX_SETTINGS:
                self._loops.popitem(last=False)
        else:
            self._loops.move_to_end(key)
        i = self._position
        self._position = (i + 1) % self.frames
        image = loop[i]
        if image is None:
            loop_t, loop_pose = self._poses[i]
            image = np.ascontiguousarray(self.source.render(params, loop_pose, loop_t), dtype=np.uint8)
            image.setflags(write=False)  # shared by every pass of the loop
            loop[i] = image
            self.rendered += 1
        return image

    def fill(self, params: dict[str, Any]) -> None:
        """Render the whole loop for ``params`` now (at start-up, before a host connects)."""
        for _ in range(self.frames):
            self.render(params, self._poses[0][1], 0.0)
