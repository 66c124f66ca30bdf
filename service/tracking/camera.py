"""``CameraSource``: the daemon's :class:`~service.daemon.pipeline.PoseSource`. A thread reads the camera
(live or recording, the same code), finds the markers, fits the probe, maps it into the patient frame
with the calibration and keeps a ring of host-timestamped poses that ``pose_at`` interpolates.

States (``status`` topic): ``tracking`` (a pose within ``lost_after_s``), ``searching`` (camera
running, probe not seen yet), ``lost`` (it was tracked, not any more: hidden or out of view),
``uncalibrated`` (no camera-to-patient calibration: no patient-frame pose), ``absent`` (no camera,
unplugged, or the recording ended). In every state but ``tracking`` guidance runs from the image alone.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bridge.devicelog import device_logger
from service.daemon.clock import Clock, MonotonicClock
from service.daemon.config import CameraConfig
from service.tracking import calibration as cal
from service.tracking.device import (
    CameraFrame,
    CameraSpec,
    CameraUnavailableError,
    EmulatedCamera,
    OpenCamera,
    open_camera,
)
from service.tracking.markers import Intrinsics, detect_markers
from service.tracking.pose import fit_probe, pose_of
from service.tracking.track import CameraPose, PoseSample, PoseTrack, TimestampMapper

STATES = ("tracking", "searching", "lost", "uncalibrated", "absent")


@dataclass(frozen=True)
class FrameRecord:
    """What happened to one camera frame (diagnostics; the last few seconds are kept)."""

    number: int
    host_time: float
    markers: tuple[str, ...]
    fit_rms_mm: float | None  # None: no pose from this frame


@dataclass
class _CalibrationRequest:
    wanted: int
    max_frames: int
    usable: list[cal.CalibrationFrame] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class CameraSource:
    def __init__(
        self,
        spec: CameraSpec,
        calibration_path: str | Path = "",
        clock: Clock | None = None,
        lost_after_s: float = 0.5,
        retry_s: float = 2.0,
    ) -> None:
        self.spec = spec
        self.calibration_path = Path(calibration_path) if calibration_path else None
        self.clock = clock or MonotonicClock()
        self.lost_after_s = lost_after_s
        self.retry_s = retry_s
        self.log = device_logger(__name__, spec.label)
        self.track = PoseTrack()
        self.state = "searching"
        self.state_log: deque[tuple[float, str]] = deque([(self.clock.now(), self.state)], maxlen=50)
        self.last_error = ""
        self.frames = 0
        self.poses = 0
        self.calibration: cal.Calibration | None = None
        self.intrinsics: Intrinsics | None = None
        self.serial = ""
        if self.calibration_path is not None:
            try:
                self.calibration = cal.load(self.calibration_path)
                self.log.info("camera calibration %s (residual %.2f mm)", self.calibration_path,
                              self.calibration.residual_mm)  # fmt: skip
            except cal.CalibrationError as e:
                self.log.warning("%s; tracking gives no patient-frame pose until calibrated", e)
        self._lock = threading.Lock()
        self._request: _CalibrationRequest | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.history: deque[FrameRecord] = deque(maxlen=150)
        self._ever_tracked = False
        self._last_pose_host: float | None = None

    # --- PoseSource -----------------------------------------------------------------------------

    def pose_at(self, host_time: float) -> CameraPose | None:
        """The probe pose at a probe frame's host time (interpolated), or None when not tracked then."""
        if self.calibration is None:
            return None
        return self.track.at(host_time)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> CameraSource:
        self._thread = threading.Thread(target=self._run, name=self.spec.label, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _set_state(self, state: str, why: str = "") -> None:
        if state != self.state:
            level = 30 if state in ("absent", "lost") else 20
            self.log.log(level, "camera %s -> %s%s", self.state, state, f": {why}" if why else "")
            self.state = state
            self.state_log.append((self.clock.now(), state))

    def _run(self) -> None:
        camera: OpenCamera | EmulatedCamera | None = None
        mapper = TimestampMapper()
        while not self._stop.is_set():
            if camera is None:
                try:
                    camera = open_camera(self.spec, self.clock.now)
                except CameraUnavailableError as e:
                    self.last_error = str(e)
                    self._set_state("absent", str(e))
                    self._stop.wait(self.retry_s)
                    continue
                mapper = TimestampMapper()
                self.intrinsics, self.serial = camera.intrinsics, camera.serial
                self._set_state("searching" if self.calibration else "uncalibrated", "camera opened")
            try:
                frame = camera.read(1000)
            except RuntimeError as e:  # unplugged mid-read
                frame, self.last_error = None, str(e)
            if frame is None:
                why = (
                    "recording ended" if self.spec.kind == "recording" and not self.spec.loop else "no frames"
                )
                self._set_state("absent", why)
                camera.close()
                camera = None
                if self.spec.kind == "recording" and not self.spec.loop:
                    break
                continue
            try:
                self._process(frame, mapper, camera)
            except Exception:
                self.log.exception("camera frame %d could not be processed", frame.number)
        if camera is not None:
            camera.close()

    def _process(
        self, frame: CameraFrame, mapper: TimestampMapper, camera: OpenCamera | EmulatedCamera
    ) -> None:
        self.frames += 1
        if camera.is_recording:
            host = mapper.recording(frame.timestamp_ms, frame.arrival_host)
        elif frame.domain in ("global_time", "system_time"):
            host = mapper.system_stamped(frame.timestamp_ms, frame.arrival_host, frame.arrival_wall_s)
        else:
            host = frame.arrival_host
        self._serve_calibration(frame, camera)
        markers = detect_markers(frame.rgb, frame.depth_mm, camera.intrinsics)
        fit = fit_probe({n: m.centre_mm for n, m in markers.items()})
        calibration = self.calibration
        self.history.append(
            FrameRecord(
                frame.number, host, tuple(sorted(markers)), fit.rms_mm if fit and calibration else None
            )
        )
        if calibration is None:
            self._set_state("uncalibrated")
            return
        if fit is not None:
            position, quat = pose_of(calibration.T_patient_cam @ fit.T_cam_probe)
            self.track.add(PoseSample(host, position, quat, fit.rms_mm))
            self.poses += 1
            self._ever_tracked, self._last_pose_host = True, host
        recent = self._last_pose_host is not None and host - self._last_pose_host <= self.lost_after_s
        if recent:
            self._set_state("tracking")
        else:
            self._set_state("lost" if self._ever_tracked else "searching", f"markers seen: {sorted(markers)}")

    # --- calibration ----------------------------------------------------------------------------

    def _serve_calibration(self, frame: CameraFrame, camera: OpenCamera | EmulatedCamera) -> None:
        with self._lock:
            req = self._request
        if req is None or req.done.is_set():
            return
        got = cal.measure_frame(frame.rgb, frame.depth_mm, camera.intrinsics)
        if isinstance(got, str):
            req.reasons.append(got)
        else:
            req.usable.append(got)
        if len(req.usable) >= req.wanted or len(req.usable) + len(req.reasons) >= req.max_frames:
            req.done.set()

    def calibrate(self, frames: int = 10, timeout_s: float = 10.0) -> dict[str, Any]:
        """Calibrate from the next frames (the daemon's ``cmd/calibrate_camera``): find the stickers,
        solve, write the calibration file atomically, use it from the next frame on."""
        req = _CalibrationRequest(wanted=frames, max_frames=3 * frames)
        with self._lock:
            if self._request is not None and not self._request.done.is_set():
                raise cal.CalibrationError("a calibration is already running")
            self._request = req
        try:
            if not req.done.wait(timeout_s) and len(req.usable) < cal.MIN_FRAMES:
                raise cal.CalibrationError(
                    f"camera {self.state}: {len(req.usable) + len(req.reasons)} frame(s) in {timeout_s:g} s"
                    + (f" ({self.last_error})" if self.last_error else "")
                )
        finally:
            with self._lock:
                self._request = None
        if len(req.usable) < cal.MIN_FRAMES and req.reasons:
            common = max(set(req.reasons), key=req.reasons.count)
            raise cal.CalibrationError(
                f"all three stickers were seen in only {len(req.usable)} of "
                f"{len(req.usable) + len(req.reasons)} frames ({common})"
            )
        result = cal.solve(req.usable, camera=self.serial or self.spec.label)
        if self.calibration_path is not None:
            cal.save(result, self.calibration_path)
        self.track.clear()  # poses in the old patient frame must not be mixed with new ones
        self.calibration = result
        self.log.info("calibrated: residual %.2f mm from %d frames", result.residual_mm, result.frames)
        doc = result.as_dict()
        return {
            "residual_mm": doc["residual_mm"],
            "frames": result.frames,
            "camera_to_patient": doc["camera_to_patient"],
            "path": str(self.calibration_path or ""),
        }


def camera_from_config(config: CameraConfig, clock: Clock | None = None) -> CameraSource | None:
    """The configured camera (not started), or None for ``source = "none"``."""
    if config.source == "none":
        return None
    if config.source == "realsense":
        spec = CameraSpec("realsense", serial=config.serial)
    elif config.source == "emulator":
        spec = CameraSpec("emulator", socket=config.socket)
    else:
        spec = CameraSpec("recording", recording=config.recording, loop=True, real_time=True)
    return CameraSource(spec, config.calibration, clock)
