"""What the daemon needs from the world: one small interface per device (docs/architecture.md).

- :class:`ProbeLinkLike` — the probe (``firmware_bridge.link.ProbeLink`` to real firmware or the
  reference emulator on a pty; the closed-loop evaluation's simulated-time probe);
- :class:`Model` and its :class:`ModelOutput` — the model (``service.daemon.onnx_model``, the heuristic
  placeholder in ``service.daemon.inference``, the evaluation's oracle);
- :class:`PoseSource` giving :class:`TrackedPose` — the camera (``service.tracking.camera``: RealSense
  or a recording);
- :class:`Publisher` — the display side (``service.mqtt.client.MqttApi``; :class:`MemoryPublisher`
  in memory, for the evaluation and the tests).

The hardware, the emulator or recording and the simulation sit behind the same seam, chosen by
config. This module imports nothing of the project: every layer of the daemon may read it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # the contract is policy's pure code; the seam only names it
    from service.policy.clip_window import ClipContract

Vec3 = tuple[float, float, float]
ZERO3: Vec3 = (0.0, 0.0, 0.0)


# --- the probe -------------------------------------------------------------------------------------


class ProbeFrameLike(Protocol):
    frame_id: int
    device_ts_us: int
    host_time: float
    image: np.ndarray  # uint8 (H, W)
    params: dict[str, Any]  # gain_db, depth_mm, freq_mhz, tgc_db, frozen, contact


class ProbeLinkLike(Protocol):
    info: Any

    def latest_frame(self, timeout: float = ...) -> Any:
        """The newest :class:`ProbeFrameLike`, or None after ``timeout`` seconds."""
        ...

    def set_param(self, name: str, value: Any) -> Any:
        """Set a parameter; returns the value read back from the device."""
        ...

    def get_param(self, name: str) -> Any: ...


# --- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOutput:
    """One frame's judgement (units from docs/architecture.md, "Model API")."""

    gain_error_db: float  # current - best gain; positive = too bright
    best_depth_mm: float
    target_visible: float  # 0-1
    quality: float  # 0-1, view quality
    contact: float  # 0-1, acoustic coupling
    correction_mm: Vec3 = ZERO3  # motion to apply, current probe frame
    correction_deg: Vec3 = ZERO3  # rotation vector, current probe frame
    confidence: float = 0.0  # 0-1: how much to trust the pose correction
    # 1 sd of each correction axis (dx dy dz mm, rx ry rz deg) when the model says (a clip head)
    correction_sd: tuple[float, float, float, float, float, float] | None = None
    # the frame's features, for a model that reads a clip of them (the service keeps the history)
    features: Any = field(default=None, compare=False, repr=False)


class Model(Protocol):
    name: str
    version: str
    provider: str  # execution provider actually used, e.g. "CPUExecutionProvider"

    def warmup(self) -> None:
        """Run once on a dummy input so the first real frame is not slow."""
        ...

    def predict(self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float) -> ModelOutput:
        """``image``: uint8 (H, W) B-mode, rows = depth."""
        ...


@runtime_checkable
class ClipModel(Model, Protocol):
    """A model with a clip head (manifest ``clip``): ``predict`` also gives the frame's features, the
    service keeps a window of them (:class:`~service.policy.clip_window.FrameHistory`, laid out by
    ``clip_contract``) and ``with_clip`` reads it with the motion between the frames. A single-frame
    model's ``clip_contract`` is None."""

    clip_contract: ClipContract | None

    def with_clip(self, out: ModelOutput, features: np.ndarray, motion: np.ndarray) -> ModelOutput:
        """``out`` with the head's correction and 1 sd for this window in place of the frame's."""
        ...


# --- the camera ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correction:
    """A suggested motion in the current probe frame, with its uncertainty (1-sigma, per axis)."""

    translation_mm: Vec3 = ZERO3
    rotation_deg: Vec3 = ZERO3
    sigma_mm: float = math.inf
    sigma_deg: float = math.inf

    @property
    def known(self) -> bool:
        return math.isfinite(self.sigma_mm) or math.isfinite(self.sigma_deg)


@dataclass(frozen=True)
class TrackedPose:
    """What camera tracking gives guidance for one frame."""

    patient_from_probe: np.ndarray  # 3×3, columns = probe axes in patient coordinates
    correction: Correction | None = None  # camera-derived motion toward the target, probe frame
    position_mm: np.ndarray | None = None  # probe face centre in the patient frame (None: not known)


class PoseSource(Protocol):
    state: str  # "tracking" | "searching" | "lost" | "uncalibrated" | "absent" (service.tracking.camera)

    def pose_at(self, host_time: float) -> TrackedPose | None: ...


# --- the display -----------------------------------------------------------------------------------


class Publisher(Protocol):
    def publish_guidance(self, message: dict[str, Any]) -> bool: ...
    def publish_event(self, message: dict[str, Any]) -> bool: ...
    def publish_retained(self, name: str, message: dict[str, Any]) -> None: ...


class MemoryPublisher:
    """The in-memory :class:`Publisher`: keeps what a display would receive.

    ``keep_guidance`` bounds the guidance messages kept (the newest win; None keeps all); events are
    all kept; retained messages by name, the last one each, as a broker keeps them.
    """

    def __init__(self, keep_guidance: int | None = None) -> None:
        self.guidance: deque[dict[str, Any]] = deque(maxlen=keep_guidance)
        self.events: list[dict[str, Any]] = []
        self.retained: dict[str, dict[str, Any]] = {}

    def publish_guidance(self, message: dict[str, Any]) -> bool:
        self.guidance.append(message)
        return True

    def publish_event(self, message: dict[str, Any]) -> bool:
        self.events.append(message)
        return True

    def publish_retained(self, name: str, message: dict[str, Any]) -> None:
        self.retained[name] = message
