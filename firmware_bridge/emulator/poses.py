"""Where the emulated probe is: a scripted path, a caller's function, or a stream of JSON lines."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pose:
    """Probe frame in the patient frame (docs/architecture.md): face centre in mm, quaternion w, x, y, z.

    ``contact`` overrides the geometric test (face at or below the skin, z >= -1 mm) when not None.
    """

    position_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quaternion: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    contact: bool | None = None

    @property
    def in_contact(self) -> bool:
        return self.contact if self.contact is not None else self.position_mm[2] >= -1.0

    @classmethod
    def from_json(cls, obj: dict) -> Pose:
        pos = tuple(float(v) for v in obj.get("position_mm", (0.0, 0.0, 0.0)))
        quat = tuple(float(v) for v in obj.get("quaternion", (1.0, 0.0, 0.0, 0.0)))
        if len(pos) != 3 or len(quat) != 4:
            raise ValueError("pose needs position_mm [x, y, z] and quaternion [w, x, y, z]")
        contact = obj.get("contact")
        return cls(pos, quat, None if contact is None else bool(contact))


class PoseSource(Protocol):
    def pose_at(self, t: float) -> Pose:
        """The probe pose at ``t`` seconds since the emulator started."""
        ...


class ScriptedPath:
    """The default: a slow sweep over the abdomen, in contact, optionally lifted for a while every period."""

    def __init__(self, lift_every_s: float | None = None, lift_for_s: float = 1.0) -> None:
        self.lift_every_s = lift_every_s
        self.lift_for_s = lift_for_s

    def pose_at(self, t: float) -> Pose:
        x = 40.0 * math.sin(2 * math.pi * t / 20.0)
        y = 20.0 * math.sin(2 * math.pi * t / 31.0)
        lifted = (
            self.lift_every_s is not None and (t % self.lift_every_s) > self.lift_every_s - self.lift_for_s
        )
        return Pose((x, y, -10.0 if lifted else 0.0))


class CallablePoseSource:
    """Poses from a caller's function of time, e.g. the simulated novice in the same process."""

    def __init__(self, fn: Callable[[float], Pose]) -> None:
        self.fn = fn

    def pose_at(self, t: float) -> Pose:
        return self.fn(t)


class StreamPoseSource:
    """Latest pose from JSON lines (``{"position_mm": [...], "quaternion": [...], "contact": true}``).

    Reads on its own thread, e.g. from the emulator's stdin fed by the closed-loop evaluation.
    Bad lines are logged and skipped; until the first good line the ``initial`` pose is used.
    """

    def __init__(self, stream: IO[str], initial: Pose | None = None) -> None:
        self._latest = initial or Pose()
        self._lock = threading.Lock()
        self.rejected = 0
        self._thread = threading.Thread(target=self._read, args=(stream,), name="pose-stream", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if not line.strip():
                continue
            try:
                pose = Pose.from_json(json.loads(line))
            except (ValueError, TypeError, AttributeError) as exc:
                self.rejected += 1
                log.warning("pose stream: rejected a line (%s)", exc)
                continue
            with self._lock:
                self._latest = pose

    def pose_at(self, t: float) -> Pose:
        with self._lock:
            return self._latest
