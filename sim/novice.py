"""Simulated users for closed-loop evaluation.

``NoviceUser`` follows probe-frame motion requests (translation mm, rotation vector degrees) the way a
novice does: after a reaction delay, at a limited speed, with a magnitude error, sometimes in the wrong
direction, with tremor and slow drift, occasionally lifting the probe off the skin, and otherwise
keeping the face on the skin. Every imprecision scales with ``noise`` in [0, 1]; noise 0 executes
requests exactly. ``UnguidedNovice`` searches without instructions. All seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.phantom import PRESS_MM, Phantom
from sim.types import Pose, matrix_to_rotvec, rotvec_to_matrix

Motion = tuple[np.ndarray, np.ndarray]  # (translation mm (3,), rotation vector deg (3,)), probe frame


def on_skin(phantom: Phantom, pose: Pose, press_mm: float = PRESS_MM) -> Pose:
    """The pose moved along patient z so that its face centre is ``press_mm`` below the skin."""
    x, y = float(pose.position_mm[0]), float(pose.position_mm[1])
    z = float(phantom.surface_z(x, y)) + press_mm
    return Pose(np.array([x, y, z]), pose.quat_wxyz)


def _same_request(a: Motion | None, b: Motion | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a[0], b[0], atol=1e-6) and np.allclose(a[1], b[1], atol=1e-6))


@dataclass
class _Lift:
    remaining_s: float
    height_mm: float


class NoviceUser:
    """A novice following instructions; call ``follow`` once per time step of ``dt`` seconds."""

    SPEED_MM_S = 15.0
    SPEED_DEG_S = 25.0
    REREAD_S = 2.0  # the same instruction still showing after this long is done again

    def __init__(self, noise: float, seed: int, phantom: Phantom | None = None) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.noise = float(noise)
        self.phantom = phantom
        self.rng = np.random.default_rng([int(seed), 0x0A1CE])
        self._request: Motion | None = None
        self._since_request = 0.0
        self._delay = 0.0
        self._plan: Motion | None = None  # what is left of the motion being executed
        self._since_done: float | None = None
        self._tremor = np.zeros(6)
        self._press = PRESS_MM
        self._lift: _Lift | None = None
        self.lifts = 0  # how often the probe left the skin (for evaluation reports)

    # --- imprecision ---------------------------------------------------------------------------
    def _executed(self, request: Motion) -> Motion:
        """What the novice actually sets out to do for a request."""
        t = np.asarray(request[0], dtype=float).copy()
        r = np.asarray(request[1], dtype=float).copy()
        n = self.noise
        if n == 0:
            return t, r
        scale = float(np.exp(self.rng.normal(0.0, 0.35 * n)))
        t = t * scale + self.rng.normal(0.0, 0.15 * n, 3) * np.linalg.norm(t)
        r = r * scale + self.rng.normal(0.0, 0.15 * n, 3) * np.linalg.norm(r)
        if self.rng.uniform() < 0.15 * n:  # wrong direction: the dominant component reversed
            both = np.concatenate([t, r / 2.0])
            k = int(np.argmax(np.abs(both)))
            if k < 3:
                t[k] = -t[k]
            else:
                r[k - 3] = -r[k - 3]
        return t, r

    def _step_plan(self, dt: float) -> Motion:
        """The part of the plan done in this step, limited by hand speed. The rest is re-expressed in
        the moved probe frame, so the steps compose exactly to the planned motion."""
        assert self._plan is not None
        t, r = self._plan
        nt, nr = float(np.linalg.norm(t)), float(np.linalg.norm(r))
        ft = 1.0 if nt <= self.SPEED_MM_S * dt else self.SPEED_MM_S * dt / nt
        fr = 1.0 if nr <= self.SPEED_DEG_S * dt else self.SPEED_DEG_S * dt / nr
        step = (t * ft, r * fr)
        if ft >= 1.0 and fr >= 1.0:
            self._plan = None
            self._since_done = 0.0
        else:
            rest = Pose.from_rotation_vector(*step).inverse().compose(Pose.from_rotation_vector(t, r))
            self._plan = (rest.position_mm.copy(), matrix_to_rotvec(rest.rotation_matrix()))
        return step

    def _tremor_and_drift(self, dt: float) -> Motion:
        n = self.noise
        if n == 0:
            return np.zeros(3), np.zeros(3)
        # Tremor: a fast mean-reverting jitter (no net displacement); drift: a slow random walk.
        tau = 0.15
        decay = np.exp(-dt / tau)
        sigma = np.array([0.5, 0.5, 0.2, 0.6, 0.6, 0.4]) * n
        new = self._tremor * decay + sigma * np.sqrt(1 - decay**2) * self.rng.standard_normal(6)
        delta = new - self._tremor
        self._tremor = new
        drift = self.rng.standard_normal(6) * np.sqrt(dt) * np.array([1.0, 1.0, 0.0, 1.2, 1.2, 1.0]) * n
        d = delta + drift
        return d[:3], d[3:]

    # --- the step ----------------------------------------------------------------------------
    def follow(self, pose: Pose, motion: Motion | None, dt: float, phantom: Phantom | None = None) -> Pose:
        """The pose after ``dt`` seconds of trying to carry out ``motion`` (None: hold still)."""
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}")
        phantom = phantom or self.phantom
        if motion is not None:
            motion = (
                np.asarray(motion[0], dtype=float).reshape(3),
                np.asarray(motion[1], dtype=float).reshape(3),
            )
        if not _same_request(motion, self._request):
            self._request = motion
            self._since_request = 0.0
            self._delay = float(self.rng.uniform(0.2, 1.0)) * self.noise
            self._plan = None
            self._since_done = None
        else:
            self._since_request += dt
        ready = self._request is not None and self._plan is None and self._since_request >= self._delay
        if ready and (self._since_done is None or self._since_done >= self.REREAD_S):
            assert self._request is not None
            self._plan = self._executed(self._request)
            self._since_done = None
        if self._since_done is not None:
            self._since_done += dt

        t, r = np.zeros(3), np.zeros(3)
        if self._plan is not None:
            t, r = self._step_plan(dt)
        jt, jr = self._tremor_and_drift(dt)
        self._press = float(np.clip(self._press + t[2], 0.0, 15.0))
        moved = pose.apply_motion(t + jt, r + jr)
        if phantom is None:
            return moved
        return self._contact(moved, phantom, dt)

    def _contact(self, pose: Pose, phantom: Phantom, dt: float) -> Pose:
        if self._lift is None and self.rng.uniform() < 0.03 * self.noise * dt:
            self._lift = _Lift(float(self.rng.uniform(0.3, 1.2)), float(self.rng.uniform(4.0, 10.0)))
            self.lifts += 1
        if self._lift is not None:
            self._lift.remaining_s -= dt
            if self._lift.remaining_s <= 0:
                self._lift = None
            else:
                return on_skin(phantom, pose, -self._lift.height_mm)
        return on_skin(phantom, pose, self._press)


class UnguidedNovice:
    """A plausible search without guidance: smooth random sliding and turning around the start,
    slowing down and fine-tuning once the target shows on the screen (when a phantom is given)."""

    def __init__(self, seed: int, noise: float = 0.5) -> None:
        self.rng = np.random.default_rng([int(seed), 0x5EA2C])
        self.noise = float(noise)
        self._vel = np.zeros(6)  # probe-frame velocity: mm/s (x, y, z) and deg/s (rx, ry, rz)
        self._origin: np.ndarray | None = None
        self._best: tuple[float, Pose] | None = None

    def step(self, pose: Pose, dt: float, phantom: Phantom | None = None) -> Pose:
        if self._origin is None:
            self._origin = pose.position_mm.copy()
        seen = 0.0
        if phantom is not None:
            from sim.truth import view_score  # local: truth renders, keep the import cheap

            gt = view_score(phantom, pose, phantom.preset.default)
            seen = gt.target_visible
            if self._best is None or gt.quality > self._best[0]:
                self._best = (gt.quality, pose)
        tau = 1.5
        decay = np.exp(-dt / tau)
        scale = np.array([12.0, 8.0, 0.0, 6.0, 6.0, 15.0]) * (1.0 - 0.7 * seen)
        self._vel = self._vel * decay + scale * np.sqrt(1 - decay**2) * self.rng.standard_normal(6)
        # Stay in the exam area: steer back when more than 60 mm from the start.
        offset = pose.position_mm - self._origin
        if np.linalg.norm(offset[:2]) > 60.0:
            back = pose.rotation_matrix().T @ (-offset)
            self._vel[:2] += 0.5 * back[:2] * dt
        moved = pose.apply_motion(self._vel[:3] * dt, self._vel[3:] * dt)
        moved = _limit_tilt(moved, phantom, 40.0)
        return on_skin(phantom, moved) if phantom is not None else moved


def _limit_tilt(pose: Pose, phantom: Phantom | None, max_deg: float) -> Pose:
    """Undo tilts beyond ``max_deg`` from the skin normal (a novice keeps the probe roughly upright)."""
    if phantom is None:
        return pose
    r = pose.rotation_matrix()
    normal = phantom.surface_normal(float(pose.position_mm[0]), float(pose.position_mm[1]))
    angle = float(np.degrees(np.arccos(np.clip(r[:, 2] @ normal, -1, 1))))
    if angle <= max_deg:
        return pose
    axis = np.cross(r[:, 2], normal)
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    back = rotvec_to_matrix(axis * (angle - max_deg))
    return Pose.from_matrix(pose.position_mm, back @ r)


def random_start_pose(phantom: Phantom, seed: int) -> Pose:
    """A start on the skin 30–80 mm and 20–60° away from the standard view."""
    from sim.truth import pose_error

    rng = np.random.default_rng([int(seed), 0x57A27])
    target = phantom.target_pose
    for _ in range(200):
        d = rng.uniform(30.0, 80.0)
        phi = rng.uniform(0, 2 * np.pi)
        rot = [rng.uniform(-20, 20), rng.uniform(-20, 20), rng.choice([-1, 1]) * rng.uniform(15, 55)]
        moved = target.apply_motion([d * np.cos(phi), d * np.sin(phi), 0.0], rot)
        start = on_skin(phantom, moved)
        dist, angle = pose_error(start, target)
        if 30.0 <= dist <= 80.0 and 20.0 <= angle <= 60.0:
            return start
    raise RuntimeError("could not draw a start pose in range (phantom surface too curved?)")
