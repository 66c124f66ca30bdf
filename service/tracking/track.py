"""Timestamped probe poses in host time: a bounded ring, interpolation at probe-frame times, and the
mapping of camera timestamps onto the host clock. Pure (locks only), no librealsense.

Probe frames carry ``host_time`` from the probe link's time sync (device µs -> host seconds on the
injected clock); camera frames get host times here on the same clock, so a probe frame's pose is the
camera track evaluated at its ``host_time``.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from firmware_bridge.kit import quat_to_matrix
from service.seams import TrackedPose
from service.tracking.pose import slerp

MAX_EXTRAPOLATION_S = 0.1  # beyond the newest (or before the oldest) pose: no answer
MAX_GAP_S = 0.25  # never interpolate across a longer hole (an occlusion happened in it)


@dataclass(frozen=True)
class PoseSample:
    host_time: float
    position_mm: np.ndarray  # probe face centre, patient frame
    quat_wxyz: np.ndarray  # probe frame in patient frame
    fit_rms_mm: float = 0.0


@dataclass(frozen=True)
class CameraPose(TrackedPose):
    """A :class:`TrackedPose` with the full pose (position too) and how it was obtained."""

    position_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    quat_wxyz: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))
    host_time: float = 0.0
    age_s: float = 0.0  # distance to the nearest real camera sample (0 = interpolated between two)


def interpolate(samples: list[PoseSample], t: float, max_gap_s: float = MAX_GAP_S,
                max_extrapolation_s: float = MAX_EXTRAPOLATION_S) -> CameraPose | None:  # fmt: skip
    """The pose at host time ``t`` from samples sorted by time: linear position, slerp rotation
    between the bracketing pair; constant-velocity extrapolation up to ``max_extrapolation_s`` past
    either end; None farther out or across a gap longer than ``max_gap_s``."""
    if not samples:
        return None
    times = [s.host_time for s in samples]
    i = bisect.bisect_right(times, t)
    if 0 < i < len(samples):
        a, b = samples[i - 1], samples[i]
        if b.host_time - a.host_time <= max_gap_s:
            return _between(a, b, t, 0.0)
        near = a if t - a.host_time <= b.host_time - t else b
        if abs(t - near.host_time) > max_extrapolation_s:
            return None
        return _between(near, near, t, abs(t - near.host_time))
    end = samples[-1] if i == len(samples) else samples[0]
    age = abs(t - end.host_time)
    if age > max_extrapolation_s:
        return None
    # The neighbour of the end sample gives the velocity, if it is close enough to trust.
    other = (
        samples[-2] if i == len(samples) and len(samples) > 1 else (samples[1] if len(samples) > 1 else end)
    )
    if other is end or abs(other.host_time - end.host_time) > max_gap_s:
        return _between(end, end, t, age)
    first, second = (other, end) if other.host_time < end.host_time else (end, other)
    return _between(first, second, t, age)


def _between(a: PoseSample, b: PoseSample, t: float, age: float) -> CameraPose:
    span = b.host_time - a.host_time
    s = 0.0 if span <= 0 else (t - a.host_time) / span
    position = a.position_mm + s * (b.position_mm - a.position_mm)
    quat = slerp(a.quat_wxyz, b.quat_wxyz, s)
    return CameraPose(
        patient_from_probe=quat_to_matrix(quat), position_mm=position, quat_wxyz=quat, host_time=t, age_s=age
    )


class PoseTrack:
    """The last ``capacity`` tracked poses (thread-safe: the camera thread adds, the pipeline reads)."""

    def __init__(self, capacity: int = 90) -> None:
        self._samples: deque[PoseSample] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, sample: PoseSample) -> None:
        with self._lock:
            if self._samples and sample.host_time <= self._samples[-1].host_time:
                self._samples.clear()  # time went backwards (a clock or playback restart)
            self._samples.append(sample)

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()

    def latest(self) -> PoseSample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def at(self, t: float) -> CameraPose | None:
        with self._lock:
            samples = list(self._samples)
        return interpolate(samples, t)


class TimestampMapper:
    """Host time of a camera frame.

    - Recordings: the recording's own timestamps, anchored to the host clock at the first frame (and
      re-anchored when playback loops or jumps), so a recording replays with its true frame spacing.
    - Live frames stamped in the host's system time (``global_time``/``system_time`` domains): the
      age of the stamp at arrival is subtracted from the arrival time on the injected clock.
    - Other domains (the camera's own hardware clock): the arrival time.
    """

    def __init__(self, frame_period_s: float = 1 / 30, max_lag_s: float = 0.25) -> None:
        self.frame_period_s = frame_period_s
        self.max_lag_s = max_lag_s
        self._base: tuple[float, float] | None = None  # (timestamp ms, host s)
        self._last: tuple[float, float] | None = None

    def recording(self, timestamp_ms: float, arrival_host: float) -> float:
        last = self._last
        if self._base is None or last is None:
            self._base = (timestamp_ms, arrival_host)
        elif timestamp_ms <= last[0] or timestamp_ms - last[0] > 1000.0:
            # Loop or jump: continue one frame period after the last frame.
            self._base = (timestamp_ms, last[1] + self.frame_period_s)
        host = self._base[1] + (timestamp_ms - self._base[0]) / 1000.0
        if host > arrival_host or host < arrival_host - self.max_lag_s:
            # Playback ran ahead (a burst at start) or fell behind (a pause at the loop): a frame is
            # never stamped later than it arrived, nor long before.
            self._base = (timestamp_ms, arrival_host)
            host = arrival_host
        self._last = (timestamp_ms, host)
        return host

    @staticmethod
    def system_stamped(timestamp_ms: float, arrival_host: float, arrival_wall_s: float) -> float:
        latency = arrival_wall_s - timestamp_ms / 1000.0
        return arrival_host - min(max(latency, 0.0), 0.5)  # a sane bound against clock steps
