"""Shared pieces of the tracking tests: real librealsense recordings of the simulated scene, written
once per session with sim.camera and read back through rs.pipeline (service.tracking.device)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.kit import Intrinsics
from service.tracking import calibration as cal
from service.tracking.device import CameraFrame, CameraSpec, read_frames
from sim.camera import write_recording
from sim.phantom import make_phantom
from sim.types import Pose

NOVICE_SEED = 3  # an unguided novice, with a hand passing over the probe at about 0.3-0.8 s
PARKED_SEED = 7


@dataclass
class Recording:
    path: Path
    sidecar: dict[str, Any]
    frames: list[CameraFrame]
    intrinsics: Intrinsics

    @property
    def T_patient_cam(self) -> np.ndarray:  # noqa: N802  (T_a_b naming as in service/tracking/pose.py)
        return np.array(self.sidecar["camera_to_patient"]["matrix"], dtype=float)

    def true_pose(self, frame_number: int) -> Pose:
        return Pose.from_dict(self.sidecar["per_frame"][frame_number]["probe_pose"])

    def occluded(self, frame_number: int) -> bool:
        return bool(self.sidecar["per_frame"][frame_number]["occluded"])

    def true_calibration(self) -> cal.Calibration:
        return cal.Calibration(self.T_patient_cam, 0.0, 1, camera="ground truth")


def parked_pose(seed: int = PARKED_SEED) -> Pose:
    """The probe standing on the skin away from the stickers, all three markers in view."""
    return make_phantom("abdomen", seed).pose_on_skin(-100.0, -60.0, rotation_deg=180.0)


def make_recording(path: Path, seed: int, seconds: float, parked: bool) -> Recording:
    n = round(seconds * 30)
    poses = [parked_pose(seed)] * n if parked else None
    write_recording(path, seed, seconds, poses=poses, occlusion=not parked)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    frames, intr, _ = read_frames(
        CameraSpec("recording", recording=str(path), loop=False, real_time=False), n
    )
    assert [f.number for f in frames] == list(range(n)), "the recording must play back every frame"
    return Recording(path, sidecar, frames, intr)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
