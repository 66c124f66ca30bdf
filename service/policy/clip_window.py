"""The clip head's inputs from the service's own frame history. Pure numpy; times and poses passed in.

A model whose manifest has a ``clip`` section reads the current frame with a few earlier ones (their
per-frame features, ``past_s`` seconds before it) and the probe motion from each earlier frame to the
current one when the camera tracked both. The history is kept here, not in the model, so the layout
comes from the manifest: which earlier times, how near a kept frame must be to count (``match_s``),
how the motion is scaled. A missing earlier frame (the start of a stream, a gap) is the current frame
repeated with the motion unknown, which is how the head was trained to read a still image.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.policy.belief import matrices_to_rotvecs


@dataclass(frozen=True)
class ClipContract:
    past_s: tuple[float, ...]
    match_s: float
    motion_scale: float

    @staticmethod
    def from_manifest(clip: Mapping[str, Any]) -> ClipContract:
        """The contract in a manifest's ``clip`` section; a clear error naming what is wrong."""
        try:
            past = tuple(float(v) for v in clip["past_s"])
            match = float(clip["match_s"])
            scale = float(clip["motion"]["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the manifest's clip section is incomplete or malformed: {exc!r}") from None
        if not past or any(v <= 0 for v in past) or match <= 0 or scale <= 0:
            raise ValueError(f"the manifest's clip section has non-positive times or scale: {dict(clip)}")
        return ClipContract(past, match, scale)


@dataclass(frozen=True)
class KeptFrame:
    taken_at: float
    features: np.ndarray  # (D,)
    position_mm: np.ndarray | None  # tracked pose, patient frame (None: not tracked)
    rotation: np.ndarray | None


def relative_motion(earlier: KeptFrame, now: KeptFrame) -> np.ndarray | None:
    """(6,) the earlier frame's pose in the current probe frame (mm, rotation vector deg); None
    unless the camera tracked both."""
    if (
        earlier.position_mm is None
        or earlier.rotation is None
        or now.position_mm is None
        or now.rotation is None
    ):
        return None
    r_now = np.asarray(now.rotation, float)
    t = r_now.T @ (np.asarray(earlier.position_mm, float) - np.asarray(now.position_mm, float))
    r = matrices_to_rotvecs((r_now.T @ np.asarray(earlier.rotation, float))[None])[0]
    return np.concatenate([t, r])


class FrameHistory:
    """The last second or so of frames' features and poses, and the clip head's inputs from them."""

    def __init__(self, contract: ClipContract) -> None:
        self.contract = contract
        self._frames: deque[KeptFrame] = deque()

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, frame: KeptFrame) -> None:
        if self._frames and frame.taken_at < self._frames[-1].taken_at:
            self._frames.clear()  # time went back (a new stream): the old frames say nothing now
        self._frames.append(frame)
        horizon = max(self.contract.past_s) + self.contract.match_s
        while self._frames and self._frames[0].taken_at < frame.taken_at - horizon:
            self._frames.popleft()

    def earlier(self, now: float, ago_s: float) -> KeptFrame | None:
        """The kept frame nearest ``ago_s`` before ``now``, if within ``match_s`` of it."""
        best, gap = None, self.contract.match_s
        for f in self._frames:
            d = abs(f.taken_at - (now - ago_s))
            if d <= gap:
                best, gap = f, d
        return best

    def inputs(self, current: KeptFrame) -> tuple[np.ndarray, np.ndarray]:
        """``features`` (1, K, D) and ``motion`` (1, K-1, 7) for the current frame."""
        feats = [current.features]
        motion = np.zeros((len(self.contract.past_s), 7), np.float32)
        for j, ago in enumerate(self.contract.past_s):
            past = self.earlier(current.taken_at, ago)
            if past is None or past is current:
                feats.append(current.features)  # nothing kept then: a still clip, motion unknown
                continue
            feats.append(past.features)
            moved = relative_motion(past, current)
            if moved is not None:
                motion[j, :6] = moved * self.contract.motion_scale
                motion[j, 6] = 1.0
        return np.stack(feats)[None].astype(np.float32), motion[None]


def still_clip(contract: ClipContract, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's inputs for one frame with no history: the frame repeated, the motion unknown (how the
    head reads a still image, and the service's first second)."""
    only = KeptFrame(0.0, np.asarray(features, np.float32).ravel(), None, None)
    return FrameHistory(contract).inputs(only)
