"""Guidance from the target belief while the camera tracks the probe. Pure logic, time passed in.

:class:`BeliefGuide` owns one :class:`~service.policy.belief.TargetBelief` and decides, frame by frame,
whether it may be trusted:

- a frame with a tracked pose and skin contact is folded into the belief; the correction shown is the
  belief's target pose relative to the tracked pose now, its confidence from the belief's spread;
- a tracked pose that jumps (faster than a hand moves a probe) restarts the belief: the patient moved
  or the camera was bumped, and the old evidence would send the novice away;
- without a tracked pose (camera lost, hidden, uncalibrated) guidance falls back to the image alone;
  the belief is kept for ``lost_reset_s`` and restarted after that (the patient may have moved);
- the depth that frames the target is the quality-weighted median of the model's best depth over
  the frames that saw the view well, once there are enough of them (auto depth reads it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.policy.autotune import SKIN_CONTACT
from service.policy.belief import (
    AXES,
    BeliefCalibration,
    BeliefParams,
    Estimate,
    Observation,
    TargetBelief,
    confidence_of,
    corrections_to,
    pose_distance,
    pose_jump,
    rotvecs_to_matrices,
)
from service.policy.guidance import within_tolerance

# The axes the model's image says least about, probed by a deliberate move; the in-plane ones (slide,
# rock) and the turn it reads well enough to follow, and press (dz) is contact.
PROBE_AXES = ("dy", "rx")


def _within(c: np.ndarray, tol_mm: float, tol_deg: float) -> bool:
    return within_tolerance(c[:3], c[3:], tol_mm, tol_deg)


@dataclass(frozen=True)
class BeliefStep:
    """What the belief says for one frame."""

    estimate: Estimate | None  # None: no tracked pose now, guide from the image alone
    confidence: float
    reset_reason: str | None = None  # the belief was restarted on this frame, and why
    correction: np.ndarray | None = None  # (6,) the motion to show: to the belief's target, or a probe


@dataclass(frozen=True)
class BeliefGuideParams:
    lost_reset_s: float = 5.0  # no tracked pose this long: the patient may have moved, start over
    scores_gain_db: float = 4.0  # the view scores are judged only with the gain about right
    depth_quality: float = 0.5  # frames at least this good say which depth frames the target
    depth_frames: int = 8  # ... and this many of them are needed before auto depth follows them
    tolerance_mm: float = 4.0  # the belief's correction within these: the probe is where it believes
    tolerance_deg: float = 4.0
    agree_fraction: float = 0.95  # the image agrees at this share of the score the model gives at the view
    probe_s: float = 2.5  # a probing move is shown at most this long
    probe_max: float = 10.0  # mm or deg
    probes_to_confirm: int = 2  # probes along an axis (one each way) that left the belief in place
    probe_unmoved: float = 0.7  # a probe still this share of its way off when its time is up: asked again
    settled_spread: float = 1.0  # the belief is settled on an axis with its spread within this × tolerance


class BeliefGuide:
    def __init__(
        self,
        cal: BeliefCalibration,
        params: BeliefGuideParams | None = None,
        belief_params: BeliefParams | None = None,
        seed: int = 0,
    ) -> None:
        self.params = params or BeliefGuideParams()
        self.belief = TargetBelief(cal, belief_params, seed)
        self._previous: tuple[float, np.ndarray, np.ndarray] | None = None
        self._depths: deque[tuple[float, float]] = deque(maxlen=40)  # (best depth, quality)
        self.resets = 0
        self._probe: tuple[np.ndarray, np.ndarray, float, str] | None = None  # target pose, until, axis
        self._probe_sign = dict.fromkeys(PROBE_AXES, 1.0)
        self._probe_amount = 0.0
        # Probes that left the belief where it was, per axis, and the belief's pose they confirmed.
        self._confirmed = dict.fromkeys(PROBE_AXES, 0)
        self._confirmed_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._quality_peak = {n: f.peak for n, f in cal.quality.items()}

    def reset(self, preset: str | None = None) -> None:
        """Start over from the prior (a new exam or preset, a new calibration)."""
        self.belief.reset(preset if preset is not None else self.belief.preset)
        self._previous = None
        self._depths.clear()
        self._probe = None
        self._confirmed = dict.fromkeys(PROBE_AXES, 0)
        self._confirmed_pose = None
        self.resets += 1

    def observe(
        self,
        taken_at: float,
        position: np.ndarray,
        rotation: np.ndarray,
        correction: np.ndarray,
        visible: float,
        quality: float,
        contact: float,
        gain_error_db: float,
        best_depth_mm: float,
        correction_sd: np.ndarray | None = None,
    ) -> str | None:
        """Fold one frame's model output in at the tracked pose the probe had when the frame was
        taken (frames in time order); returns why the belief was restarted, if the pose jumped.
        ``correction_sd``: the model's own 1 sd per axis, used instead of the calibrated bands."""
        p = self.params
        reason = pose_jump(self._previous, taken_at, position, rotation)
        if reason is not None:
            self.reset()
        self._previous = (taken_at, np.asarray(position, float), np.asarray(rotation, float))
        if contact >= SKIN_CONTACT:
            scores_ok = abs(gain_error_db) <= p.scores_gain_db
            sd = None if correction_sd is None else np.asarray(correction_sd, float)
            obs = Observation(np.asarray(correction, float), float(visible), float(quality), scores_ok, sd)
            self.belief.update(obs, position, rotation)
            if scores_ok and quality >= p.depth_quality and np.isfinite(best_depth_mm):
                self._depths.append((float(best_depth_mm), float(quality)))
        return reason

    def answer(
        self, now: float, position: np.ndarray | None, rotation: np.ndarray | None, quality: float
    ) -> BeliefStep:
        """The motion to show from the newest tracked pose (None: not tracked now, the image alone;
        the belief is restarted once nothing was folded in for ``lost_reset_s``)."""
        if position is None or rotation is None:
            gone = now - self._previous[0] if self._previous is not None else 0.0
            if self._previous is not None and gone > self.params.lost_reset_s:
                self.reset()
                return BeliefStep(
                    None, 0.0, f"the camera lost the probe for {gone:.0f} s: the patient may have moved"
                )
            return BeliefStep(None, 0.0)
        estimate = self.belief.estimate(position, rotation)
        correction = self._motion(now, position, rotation, estimate, quality)
        return BeliefStep(estimate, confidence_of(estimate), None, correction)

    def step(
        self,
        now: float,
        position: np.ndarray | None,
        rotation: np.ndarray | None,
        correction: np.ndarray,
        visible: float,
        quality: float,
        contact: float,
        gain_error_db: float,
        best_depth_mm: float,
    ) -> BeliefStep:
        """One frame whose tracked pose is known now (no camera latency): observe, then answer."""
        if position is None or rotation is None:
            return self.answer(now, None, None, quality)
        reason = self.observe(
            now, position, rotation, correction, visible, quality, contact, gain_error_db, best_depth_mm
        )
        step = self.answer(now, position, rotation, quality)
        return BeliefStep(step.estimate, step.confidence, reason, step.correction)

    def agreeing_quality(self) -> float:
        """The image quality at which the image agrees the view is reached (the model's own peak)."""
        preset = self.belief.preset
        peak = self._quality_peak.get(preset) if preset else min(self._quality_peak.values(), default=1.0)
        return float(self.params.agree_fraction * (peak if peak is not None else 1.0))

    def _motion(
        self, now: float, position: np.ndarray, rotation: np.ndarray, estimate: Estimate, quality: float
    ) -> np.ndarray:
        """The belief's correction, or a deliberate probing move when the probe stands where the belief
        puts the view but the image disagrees: along the axis the belief is least sure of, turning
        the other way each time, so the change of the view score between the two tracked poses
        settles it (the belief then follows the better side)."""
        p = self.params
        moved = False  # has the belief's mode left the pose the last probe set out from?
        if self._confirmed_pose is not None:
            mm, deg = pose_distance(*self._confirmed_pose, estimate.position_mm, estimate.rotation)
            moved = mm > p.tolerance_mm or deg > p.tolerance_deg
        if self._probe is not None:
            target_p, target_r, until, axis = self._probe
            to_probe = corrections_to(position, rotation, target_p[None], target_r[None])[0]
            if not _within(to_probe, p.tolerance_mm, p.tolerance_deg):
                if now < until:
                    return to_probe
                i = AXES.index(axis)
                if abs(to_probe[i]) >= p.probe_unmoved * abs(self._probe_amount):
                    # Time is up but the probe was hardly moved: it says nothing yet. Ask again, the
                    # same way (turning the other way now would only change the words).
                    self._probe = (target_p, target_r, now + p.probe_s, axis)
                    return to_probe
            self._probe = None
            # The probe is over: did the belief stay where it was? Then that side is settled.
            self._confirmed[axis] = 0 if moved else self._confirmed[axis] + 1
        if moved:  # the belief went elsewhere: what was confirmed there says nothing here
            self._confirmed = dict.fromkeys(PROBE_AXES, 0)
        c = estimate.correction
        tols = np.array([p.tolerance_mm] * 3 + [p.tolerance_deg] * 3)
        unsure = estimate.spread / tols
        settled = all(unsure[AXES.index(a)] <= p.settled_spread for a in PROBE_AXES)
        if not _within(c, p.tolerance_mm, p.tolerance_deg) or (
            settled and quality >= self.agreeing_quality()
        ):
            return c
        open_axes = [a for a in PROBE_AXES if self._confirmed[a] < p.probes_to_confirm]
        if not open_axes:
            return c  # both sides of every unsure axis were looked at: hold still here
        axis = max(open_axes, key=lambda a: unsure[AXES.index(a)])
        i = AXES.index(axis)
        tol = tols[i]
        amount = float(np.clip(2.0 * estimate.spread[i], 1.5 * tol, p.probe_max))
        sign = self._probe_sign[axis]
        self._probe_sign[axis] = -sign
        move = np.zeros(6)
        move[i] = sign * amount
        target_p = np.asarray(position) + np.asarray(rotation) @ move[:3]
        target_r = np.asarray(rotation) @ rotvecs_to_matrices(move[None, 3:])[0]
        self._probe = (target_p, target_r, now + p.probe_s, axis)
        self._probe_amount = amount
        self._confirmed_pose = (estimate.position_mm.copy(), estimate.rotation.copy())
        return move

    def target_depth_mm(self) -> float | None:
        """The depth that frames the target, from the frames that saw it well; None until enough did."""
        if len(self._depths) < self.params.depth_frames:
            return None
        depths = np.array([d for d, _ in self._depths])
        weights = np.array([q for _, q in self._depths])
        order = np.argsort(depths)
        cum = np.cumsum(weights[order])
        return float(depths[order][int(np.searchsorted(cum, 0.5 * cum[-1]))])


# How long a frame's model output waits for the tracked pose of its time, and how far back the
# newest tracked pose may lie to name the motion shown now: a camera's poses come later than the
# probe's frames (exposure, transfer, marker fit: 0.05-0.25 s on the bench under load).
POSE_WAIT_S = 0.5
ANSWER_LAG_S = (0.0, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class FrameOutput:
    """What :meth:`BeliefGuide.observe` needs of one frame's model output."""

    correction: np.ndarray  # (6,) probe frame, mm and deg
    visible: float
    quality: float
    contact: float
    gain_error_db: float
    best_depth_mm: float
    correction_sd: np.ndarray | None = None  # (6,) 1 sd per axis when the model gives it (a clip head)


class PendingFrames:
    """Model outputs waiting until the tracked pose at the time their frame was taken is known.

    ``fold(guide, pose_at, now)`` folds every frame whose pose the tracker can now give, in time
    order; a frame whose pose never came (the marker was hidden then) is dropped after
    ``wait_s``, and so is any older one still waiting once a newer frame was folded (it lies in a
    gap the tracker will not fill)."""

    def __init__(self, wait_s: float = POSE_WAIT_S) -> None:
        self.wait_s = wait_s
        self._frames: deque[tuple[float, FrameOutput]] = deque()

    def add(self, taken_at: float, output: FrameOutput) -> None:
        self._frames.append((taken_at, output))

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def fold(self, guide: BeliefGuide, pose_at: Callable[[float], Any], now: float) -> str | None:
        """Fold what can be folded; the first reason the belief was restarted on the way, if any."""
        reason: str | None = None
        waiting: list[tuple[float, FrameOutput]] = []
        for taken_at, o in self._frames:
            pose = pose_at(taken_at)
            position = getattr(pose, "position_mm", None) if pose is not None else None
            if position is None:
                if now - taken_at <= self.wait_s:
                    waiting.append((taken_at, o))
                continue
            waiting.clear()  # older frames still without a pose fell in a tracking gap
            r = guide.observe(
                taken_at, position, pose.patient_from_probe, o.correction, o.visible, o.quality, o.contact,
                o.gain_error_db, o.best_depth_mm, o.correction_sd,
            )  # fmt: skip
            reason = reason or r
        self._frames = deque(waiting)
        return reason


def newest_pose(pose_at: Callable[[float], Any], t: float, lags: tuple[float, ...] = ANSWER_LAG_S) -> Any:
    """The tracked pose at ``t`` or, while the camera's poses lag, the newest one up to the last lag back."""
    for lag in lags:
        pose = pose_at(t - lag)
        if pose is not None:
            return pose
    return None
