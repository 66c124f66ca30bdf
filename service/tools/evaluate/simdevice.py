"""The simulated device side of a closed-loop episode: a probe that holds its settings, and the oracle.

``SimProbe`` is the simulated ultrasound probe (what the emulator is on the wire, here in-process):
it holds gain/depth/frequency and applies ``set_param`` with the probe's rules — gain snaps to its
step and must lie in range, depth and frequency must be one of the listed values — and reads the
value back, as ``firmware_bridge.link.ProbeLink.set_param`` does. The pipeline drives it; the
renderer reads its settings for the next frame.

``OracleModel`` implements the :class:`service.daemon.inference.Model` seam with the simulator's ground
truth for the pose being imaged: perfect perception, so the oracle arm measures the guidance logic,
the controllers and the novice alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from service.daemon.probe import DEPTH, FREQUENCY, GAIN
from service.seams import ModelOutput
from sim.presets import ExamPreset
from sim.types import ImagingSettings, Pose

FREQUENCY_ALIASES = {FREQUENCY, "freq_mhz", "frequency_mhz"}  # the link and the service spell it differently


class ParameterRefusedError(ValueError):
    """What the device answers with a NACK: the value is out of range or not one it offers."""


@dataclass
class SimFrame:
    """One frame as the link delivers it (``service.daemon.probe.ProbeFrameLike``)."""

    frame_id: int
    device_ts_us: int
    host_time: float
    image: np.ndarray
    params: dict[str, Any]


@dataclass
class SimProbe:
    preset: ExamPreset
    settings: ImagingSettings
    changes: list[tuple[str, float]] = field(default_factory=list)  # every accepted set_param
    info: Any = None  # what ``link.info`` says (identity, capabilities), filled in from the preset

    def __post_init__(self) -> None:
        from firmware_bridge.emulator.images import preset_capabilities

        # The same capability names a real probe's IDENTIFY carries, so the pipeline reads its limits
        # exactly as it does from the link.
        self.info = SimpleNamespace(
            serial=f"SIM-{self.preset.name}",
            firmware_version="sim",
            capabilities=preset_capabilities(self.preset),
        )

    def params(self) -> dict[str, Any]:
        s = self.settings
        return {GAIN: s.gain_db, DEPTH: s.depth_mm, FREQUENCY: s.freq_mhz, "freeze": False}

    def latest_frame(self, timeout: float = 0.1) -> Any:
        return None  # frames are pushed by the episode loop through Pipeline.step

    def get_param(self, name: str) -> Any:
        return self.params()[FREQUENCY if name in FREQUENCY_ALIASES else name]

    def set_param(self, name: str, value: Any) -> float:
        v = float(value)
        if not np.isfinite(v):
            raise ParameterRefusedError(f"{name}: {value!r} is not a number")
        if name == GAIN:
            lo, hi = self.preset.gain_range_db
            if not lo <= v <= hi:
                raise ParameterRefusedError(f"gain_db {v:g} out of range {lo:g}..{hi:g}")
            step = self.preset.gain_step_db
            v = float(min(hi, max(lo, lo + round((v - lo) / step) * step)))
            self.settings = self.settings.replace(gain_db=v)
        elif name == DEPTH:
            v = _one_of(v, self.preset.depth_steps_mm, name)
            self.settings = self.settings.replace(depth_mm=v)
        elif name in FREQUENCY_ALIASES:
            v = _one_of(v, self.preset.freqs_mhz, name)
            self.settings = self.settings.replace(freq_mhz=v)
        else:
            raise ParameterRefusedError(f"unknown parameter {name!r}")
        self.changes.append((name, v))
        return v


def _one_of(value: float, allowed: tuple[float, ...], name: str) -> float:
    for a in allowed:
        if abs(a - value) <= 1e-3 * max(1.0, abs(a)):
            return float(a)
    raise ParameterRefusedError(f"{name} {value:g} is not one of {', '.join(f'{a:g}' for a in allowed)}")


class PoseHistory:
    """The eval trackers' answers by time: the pose tracked at a probe frame's time (the newest
    observation at or before it, no older than ``within_s``), None where that frame had none."""

    def __init__(self) -> None:
        self._poses: deque[tuple[float, Pose | None]] = deque(maxlen=64)  # (host time, tracked pose)

    def add(self, host_time: float, pose: Pose | None) -> None:
        self._poses.append((host_time, pose))

    def at(self, host_time: float, within_s: float = 0.05) -> Any:
        from service.seams import TrackedPose

        for t, pose in reversed(self._poses):
            if t <= host_time + 1e-9:
                if pose is None or host_time - t > within_s:
                    return None
                return TrackedPose(patient_from_probe=pose.rotation_matrix(), position_mm=pose.position_mm)
        return None


class SimTracker:
    """The camera arm's pose source: the novice's true pose through the tracker model
    (:class:`service.tools.evaluate.tracker_model.TrackerModel`: the measured noise, calibration bias and
    dropouts of the project's own tracking chain). ``observe`` is called with the true pose before
    each frame; ``pose_at`` then answers like ``service.tracking.CameraSource`` does."""

    def __init__(self, seed: int) -> None:
        from service.tools.evaluate.tracker_model import TrackerModel

        self.model = TrackerModel(seed)
        self.history = PoseHistory()
        self.state = "searching"

    def observe(self, true_pose: Pose, host_time: float) -> None:
        pose = self.model.observe(true_pose, host_time)
        self.history.add(host_time, pose)
        self.state = "tracking" if pose is not None else "lost"

    def pose_at(self, host_time: float) -> Any:
        return self.history.at(host_time)


class OracleModel:
    """Ground truth for the pose being imaged (set ``pose`` before each frame)."""

    name = "oracle"
    version = "ground-truth"
    provider = "simulator"

    def __init__(self, phantom: Any) -> None:
        self.phantom = phantom
        self.pose: Pose = phantom.target_pose

    def warmup(self) -> None:
        pass

    def predict(self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float) -> ModelOutput:
        from sim.truth import ground_truth

        settings = ImagingSettings(gain_db=gain_db, depth_mm=depth_mm, freq_mhz=freq_mhz)
        gt = ground_truth(self.phantom, self.pose, settings)
        c = (float(v) for v in gt.correction_mm)
        r = (float(v) for v in gt.correction_deg)
        return ModelOutput(
            gain_error_db=gt.gain_error_db,
            best_depth_mm=gt.best_depth_mm,
            target_visible=gt.target_visible,
            quality=gt.quality,
            contact=1.0 if gt.contact else 0.0,
            correction_mm=(next(c), next(c), next(c)),
            correction_deg=(next(r), next(r), next(r)),
            confidence=1.0 if gt.contact else 0.0,
        )
