"""Guidance: from the model's (and camera's) pose correction to one steady instruction a novice follows.

Pure logic, time passed in. Stages, each a small piece:

1. :func:`fuse_corrections` — inverse-variance weighting of the model's correction with an optional
   camera-derived one, then :class:`CorrectionFilter` (exponential smoothing) against jitter.
2. :func:`choose_instruction` — contact first (press / more gel), then a good view (hold still),
   then the dominant component of the correction, named in the patient's directions.
3. :class:`Stabilizer` — hysteresis: a new instruction must persist ``switch_s`` before it replaces
   the shown one, so the words do not flicker.
4. :class:`CaptureTrigger` — quality above the threshold for ``capture_after_s`` → one capture.

Directions ("toward the head", "patient's left") need the probe's orientation in the patient frame.
From the camera when tracked; otherwise the documented default hold: probe face down, orientation
marker (probe +x) toward the patient's head. Each instruction says which basis it used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from service.policy.search import AXES, AxisSearch, SearchParams
from service.seams import ZERO3, Correction, Vec3

BASIS_CAMERA = "camera"
BASIS_DEFAULT = "assumed_marker_toward_head"
# The correction came from the target belief (service.policy.belief): model outputs fused over the
# tracked poses they were taken at; directions are named from the tracked pose too.
BASIS_BELIEF = "belief"

# Default hold: probe x (marker) = patient +y (head), probe z (beam) = patient +z (into the body),
# so probe y = z × x = patient -x (patient's right). Columns are the probe axes in patient coordinates.
DEFAULT_PATIENT_FROM_PROBE = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

# The vocabulary: instruction id -> words on the display. Directions are the patient's.
VOCABULARY: dict[str, str] = {
    "slide_head": "Slide toward the head",
    "slide_feet": "Slide toward the feet",
    "slide_left": "Slide toward the patient's left",
    "slide_right": "Slide toward the patient's right",
    "rotate_cw": "Rotate clockwise",
    "rotate_ccw": "Rotate counter-clockwise",
    "tilt_head": "Tilt the beam toward the head",
    "tilt_feet": "Tilt the beam toward the feet",
    "tilt_left": "Tilt the beam toward the patient's left",
    "tilt_right": "Tilt the beam toward the patient's right",
    "rock_head": "Rock the beam toward the head",
    "rock_feet": "Rock the beam toward the feet",
    "rock_left": "Rock the beam toward the patient's left",
    "rock_right": "Rock the beam toward the patient's right",
    "press": "Press a little harder",
    "more_gel": "Add gel and place the probe on the skin",
    "scan": "Slide slowly to look for the target",
    "hold_still": "Hold still",
    "good_view": "Good view - hold still",
}
_DIRECTIONS = {"head": (0.0, 1.0), "feet": (0.0, -1.0), "left": (1.0, 0.0), "right": (-1.0, 0.0)}


def model_correction(correction_mm: Vec3, correction_deg: Vec3, confidence: float) -> Correction:
    """The model's correction with an uncertainty that grows as its confidence falls (none at 0)."""
    if confidence <= 0.0:
        return Correction(correction_mm, correction_deg)
    c = min(confidence, 1.0)
    return Correction(correction_mm, correction_deg, sigma_mm=5.0 / c, sigma_deg=5.0 / c)


def _fuse(a: Vec3, sa: float, b: Vec3, sb: float) -> tuple[Vec3, float]:
    if not math.isfinite(sa):
        return b, sb
    if not math.isfinite(sb):
        return a, sa
    wa, wb = 1.0 / sa**2, 1.0 / sb**2
    fused = tuple((wa * x + wb * y) / (wa + wb) for x, y in zip(a, b, strict=True))
    return (fused[0], fused[1], fused[2]), 1.0 / math.sqrt(wa + wb)


def fuse_corrections(model: Correction, camera: Correction | None) -> Correction:
    """Inverse-variance weighted mean, translation and rotation separately."""
    if camera is None:
        return model
    t, st = _fuse(model.translation_mm, model.sigma_mm, camera.translation_mm, camera.sigma_mm)
    r, sr = _fuse(model.rotation_deg, model.sigma_deg, camera.rotation_deg, camera.sigma_deg)
    return Correction(t, r, st, sr)


class CorrectionFilter:
    """Exponential smoothing of the fused correction; the time constant sets how fast words follow."""

    def __init__(self, time_constant_s: float = 0.2) -> None:
        self.time_constant_s = time_constant_s
        self._state: Correction | None = None
        self._t = 0.0

    def update(self, c: Correction, now: float) -> Correction:
        if self._state is None or not c.known or not self._state.known:
            self._state, self._t = c, now
            return c
        a = 1.0 - math.exp(-max(0.0, now - self._t) / self.time_constant_s)
        s = self._state

        def mix(old: Vec3, new: Vec3) -> Vec3:
            return (
                old[0] + a * (new[0] - old[0]),
                old[1] + a * (new[1] - old[1]),
                old[2] + a * (new[2] - old[2]),
            )

        self._state = Correction(
            mix(s.translation_mm, c.translation_mm),
            mix(s.rotation_deg, c.rotation_deg),
            c.sigma_mm,
            c.sigma_deg,
        )
        self._t = now
        return self._state


@dataclass(frozen=True)
class GuidanceParams:
    good_quality: float = 0.8
    capture_after_s: float = 1.0
    contact_min: float = 0.5  # below: press
    contact_none: float = 0.15  # below: no skin contact at all
    tolerance_mm: float = 4.0  # corrections smaller than these count as "there"
    tolerance_deg: float = 4.0
    switch_s: float = 0.3  # a new instruction must persist this long before it is shown
    stickiness: float = 1.3  # the shown axis wins ties by this factor (hysteresis on the choice)
    # Hysteresis on "hold still" itself: once shown, it stays while the quality is within
    # ``hold_quality_margin`` below good_quality and no correction exceeds its tolerance by more than
    # ``hold_motion_margin`` (a share of it), so tremor at a threshold does not flip the words.
    hold_quality_margin: float = 0.05
    hold_motion_margin: float = 0.2
    # Axes whose sign the model cannot tell from one image (service.policy.search.unreliable_axes): their
    # components are not followed; a search on the view's score over time moves along them instead.
    unreliable_axes: frozenset[str] = frozenset()
    search_visible: float = 0.3  # below this target visibility the model's whole correction is a guess
    # The unreliable axes are masked and searched only while the model sees the target (visibility at
    # or above this): their sign is a coin near the view, but far from it (target out of view) the
    # model's guess on every axis beats a blind search, which has no view score to climb there.
    near_visible: float = 0.5


@dataclass(frozen=True)
class Instruction:
    id: str  # key of VOCABULARY
    magnitude: float  # mm or degrees; 0 when not applicable
    unit: str  # "mm" | "deg" | ""
    confidence: float  # 0-1
    basis: str  # BASIS_CAMERA | BASIS_DEFAULT
    # Probe orientation used to name directions (columns = probe axes in patient coordinates).
    patient_from_probe: tuple[tuple[float, float, float], ...] = tuple(map(tuple, DEFAULT_PATIENT_FROM_PROBE))

    @property
    def text(self) -> str:
        words = VOCABULARY[self.id]
        return (
            f"{words} {self.magnitude:.0f} {'°' if self.unit == 'deg' else self.unit}" if self.unit else words
        )


def _patient_direction(
    vec_probe: np.ndarray, patient_from_probe: np.ndarray, prefer: str | None = None, stickiness: float = 1.0
) -> tuple[str, float]:
    """The patient direction (head/feet/left/right) closest to a probe-frame vector, and its length.

    ``prefer`` (the direction shown now) keeps winning near the diagonal, by the ``stickiness`` factor.
    """
    v = patient_from_probe @ vec_probe
    x, y = float(v[0]), float(v[1])
    if prefer in _DIRECTIONS:
        px, py = _DIRECTIONS[prefer]
        along, across = px * x + py * y, abs(py * x - px * y)
        if along > 0 and along * stickiness >= across:
            return prefer, math.hypot(x, y)
    if abs(y) >= abs(x):
        return ("head" if y > 0 else "feet"), math.hypot(x, y)
    return ("left" if x > 0 else "right"), math.hypot(x, y)


def good_threshold(params: GuidanceParams, current: str | None) -> float:
    """The quality that counts as a good view now: a little lower while "hold still" is shown."""
    return params.good_quality - (params.hold_quality_margin if current == "hold_still" else 0.0)


def choose_instruction(
    correction: Correction,
    quality: float,
    contact: float,
    params: GuidanceParams,
    patient_from_probe: np.ndarray | None = None,
    current: str | None = None,
) -> Instruction:
    """The one instruction for this frame (before hysteresis). ``current`` gets the stickiness bonus."""
    basis = BASIS_DEFAULT if patient_from_probe is None else BASIS_CAMERA
    rot = DEFAULT_PATIENT_FROM_PROBE if patient_from_probe is None else np.asarray(patient_from_probe, float)
    rot_t = tuple((float(r[0]), float(r[1]), float(r[2])) for r in rot)
    conf = _confidence(correction)

    def make(id_: str, magnitude: float = 0.0, unit: str = "", c: float = 1.0) -> Instruction:
        return Instruction(id_, round(float(magnitude), 1), unit, round(float(c), 3), basis, rot_t)

    if contact < params.contact_none:
        return make("more_gel", c=1.0 - contact)
    if contact < params.contact_min:
        return make("press", c=1.0 - contact)
    holding = current == "hold_still"
    if quality >= good_threshold(params, current):
        return make("hold_still", c=quality)
    if not correction.known:
        return make("scan", c=0.0)
    dx, dy, dz = correction.translation_mm
    rx, ry, rz = correction.rotation_deg
    shown_slide = current.removeprefix("slide_") if current and current.startswith("slide_") else None
    slide_dir, slide_len = _patient_direction(np.array([dx, dy, 0.0]), rot, shown_slide, params.stickiness)
    # Tilt (about probe x) swings the beam toward probe -y per +rx; rock (about y) toward probe +x per +ry.
    tilt_dir, _ = _patient_direction(np.array([0.0, -math.copysign(1.0, rx), 0.0]), rot)
    rock_dir, _ = _patient_direction(np.array([math.copysign(1.0, ry), 0.0, 0.0]), rot)
    candidates = {
        f"slide_{slide_dir}": (slide_len / params.tolerance_mm, slide_len, "mm"),
        "press": (max(dz, 0.0) / params.tolerance_mm, max(dz, 0.0), "mm"),
        ("rotate_ccw" if rz > 0 else "rotate_cw"): (abs(rz) / params.tolerance_deg, abs(rz), "deg"),
        f"tilt_{tilt_dir}": (abs(rx) / params.tolerance_deg, abs(rx), "deg"),
        f"rock_{rock_dir}": (abs(ry) / params.tolerance_deg, abs(ry), "deg"),
    }
    if current in candidates:
        score, mag, unit = candidates[current]
        candidates[current] = (score * params.stickiness, mag, unit)
    best = max(candidates, key=lambda k: candidates[k][0])
    score, mag, unit = candidates[best]
    if score < (1.0 + params.hold_motion_margin if holding else 1.0):
        return make("hold_still", c=conf)  # the pose is as good as the model can tell
    return make(best, mag, unit, conf)


def _confidence(c: Correction) -> float:
    """0-1 from the uncertainty: 1 at or below the tolerance scale, falling as sigma grows."""
    sigma = min(c.sigma_mm, c.sigma_deg)
    return 0.0 if not math.isfinite(sigma) else float(min(1.0, 5.0 / max(sigma, 1e-9)))


class Stabilizer:
    """Hysteresis: the shown instruction changes only when another one persisted ``switch_s``.

    Contact problems skip the wait: telling someone to keep sliding a probe that is off the skin
    helps nobody.
    """

    URGENT = frozenset({"more_gel", "press"})

    def __init__(self, switch_s: float = 0.3) -> None:
        self.switch_s = switch_s
        self.shown: Instruction | None = None
        self._candidate: str | None = None
        self._since = 0.0

    def update(self, raw: Instruction, now: float) -> Instruction:
        if self.shown is None or raw.id == self.shown.id:
            self.shown, self._candidate = raw, None  # same words: magnitude and confidence follow at once
            return raw
        if raw.id != self._candidate:
            self._candidate, self._since = raw.id, now
        if (raw.id in self.URGENT and self.shown.id not in self.URGENT) or now - self._since >= self.switch_s:
            self.shown, self._candidate = raw, None
        return self.shown


class CaptureTrigger:
    """Fires once when quality has stayed at or above ``threshold`` for ``hold_s``; re-arms below it."""

    def __init__(self, threshold: float, hold_s: float, rearm_margin: float = 0.05) -> None:
        self.threshold = threshold
        self.hold_s = hold_s
        self.rearm_margin = rearm_margin
        self._good_since: float | None = None
        self._fired = False

    def update(self, quality: float, now: float) -> bool:
        if quality < self.threshold:
            if quality < self.threshold - self.rearm_margin:
                self._good_since, self._fired = None, False
            elif not self._fired:
                self._good_since = None
            return False
        if self._good_since is None:
            self._good_since = now
        if not self._fired and now - self._good_since >= self.hold_s:
            self._fired = True
            return True
        return False

    @property
    def captured(self) -> bool:
        return self._fired


def mask_axes(c: Correction, axes: frozenset[str]) -> Correction:
    """The correction with the components on ``axes`` set to zero (not followed)."""
    if not axes:
        return c
    v = [*c.translation_mm, *c.rotation_deg]
    for a in axes:
        v[AXES[a][0]] = 0.0
    return Correction((v[0], v[1], v[2]), (v[3], v[4], v[5]), c.sigma_mm, c.sigma_deg)


def search_axes(unreliable: frozenset[str], visible: float, search_visible: float) -> list[str]:
    """The axes to search: the unreliable ones, and sliding too while the target is out of view."""
    axes = set(unreliable)
    if axes and visible < search_visible:
        axes.add("dx")
    return sorted(axes)


def gated_unreliable(unreliable: frozenset[str], visible: float, near_visible: float) -> frozenset[str]:
    """The unreliable axes while the model sees the target; none (follow the model) while it does not."""
    return unreliable if visible >= near_visible else frozenset()


class GuidanceEngine:
    """The per-frame guidance state machine: fuse, filter, choose, search, stabilise, capture."""

    def __init__(self, params: GuidanceParams | None = None, search: SearchParams | None = None) -> None:
        self.params = params or GuidanceParams()
        self.filter = CorrectionFilter()
        self.stabilizer = Stabilizer(self.params.switch_s)
        self.capture = CaptureTrigger(self.params.good_quality, self.params.capture_after_s)
        self.search = AxisSearch(search)

    def update(
        self,
        model: Correction,
        quality: float,
        contact: float,
        now: float,
        camera: Correction | None = None,
        patient_from_probe: np.ndarray | None = None,
        visible: float | None = None,
        belief: Correction | None = None,
        belief_good_quality: float | None = None,
        shadowed: bool = False,
    ) -> tuple[Instruction, bool]:
        """The instruction to show now, and whether to capture this frame.

        With a ``belief`` correction (camera tracking), it replaces the image's: the belief already
        holds every frame's model output. "Hold still" and the capture then need the image (quality)
        *and* the belief (correction within tolerance) to agree; ``belief_good_quality`` is the image
        quality that counts as good then (the model's own score at the view, from its manifest).
        ``shadowed`` (with a belief): no contact, yet the camera saw the probe stay on the skin; the
        belief's motion is shown instead of "press" / "add gel" (the probe must leave a shadow), and
        no capture is made without contact.
        """
        p = self.params
        seen = quality if visible is None else visible
        if belief is not None:
            good = p.good_quality if belief_good_quality is None else min(p.good_quality, belief_good_quality)
            agree = (
                within_tolerance(belief.translation_mm, belief.rotation_deg, p.tolerance_mm, p.tolerance_deg)
                and quality >= good
            )
            # Not agreeing must leave "hold still" even within its quality hysteresis.
            below = good_threshold(p, "hold_still") - 1e-6
            judged = max(quality, p.good_quality) if agree else min(quality, below)
            fused = self.filter.update(belief, now)
            current = self.stabilizer.shown.id if self.stabilizer.shown else None
            words_contact = max(contact, p.contact_min) if shadowed else contact
            raw = replace(
                choose_instruction(fused, judged, words_contact, p, patient_from_probe, current),
                basis=BASIS_BELIEF,
            )
            self.search.reset()
            return self._show(raw, judged, contact, now)
        unreliable = gated_unreliable(p.unreliable_axes, seen, p.near_visible)
        fused = self.filter.update(fuse_corrections(mask_axes(model, unreliable), camera), now)
        current = self.stabilizer.shown.id if self.stabilizer.shown else None
        raw = choose_instruction(fused, quality, contact, p, patient_from_probe, current)
        axes = search_axes(unreliable, seen, p.search_visible) if camera is None else []
        if raw.id == "hold_still" and quality < good_threshold(p, current) and axes:
            # The followed axes are done (or unknown) but the view is not good: search the others.
            move = self.search.update(seen + quality, now, axes)
            if move is not None:
                t, r = move.correction()
                raw = choose_instruction(
                    Correction(t, r, 1.0, 1.0), 0.0, 1.0, replace(p, good_quality=2.0), patient_from_probe
                )
        elif raw.id != "hold_still":
            self.search.reset()  # a followed correction (or contact) comes first; search afresh after
        return self._show(raw, quality, contact, now)

    def _show(self, raw: Instruction, quality: float, contact: float, now: float) -> tuple[Instruction, bool]:
        p = self.params
        shown = self.stabilizer.update(raw, now)
        capture = self.capture.update(quality, now) if contact >= p.contact_min else False
        if shown.id == "hold_still" and self.capture.captured:
            shown = replace(shown, id="good_view")
            self.stabilizer.shown = replace(shown, id="hold_still")  # keep the hysteresis state on one id
        return shown, capture


def within_tolerance(translation_mm: Iterable[float], rotation_deg: Iterable[float], tol_mm: float,
                     tol_deg: float) -> bool:  # fmt: skip
    """Every component of a probe-frame motion within the tolerances: the probe counts as there."""
    return max(abs(v) for v in translation_mm) <= tol_mm and max(abs(v) for v in rotation_deg) <= tol_deg


@dataclass(frozen=True)
class MotionRequest:
    """What the simulated novice is asked to do, in the current probe frame (docs/architecture.md)."""

    translation_mm: Vec3
    rotation_deg: Vec3


def instruction_to_motion(instruction: Instruction) -> MotionRequest | None:
    """The probe-frame motion an instruction asks for; ``None`` means hold still (or nothing to do).

    Uses the same orientation the words were named with, so words → motion inverts the naming.
    """
    ident, m = instruction.id, instruction.magnitude
    rot = np.array(instruction.patient_from_probe, float)
    if ident == "press":
        return MotionRequest((0.0, 0.0, m), ZERO3)
    if ident in ("rotate_ccw", "rotate_cw"):
        return MotionRequest(ZERO3, (0.0, 0.0, m if ident == "rotate_ccw" else -m))
    action, _, direction = ident.partition("_")
    if direction not in _DIRECTIONS or action not in ("slide", "tilt", "rock"):
        return None  # hold_still, good_view, more_gel, scan: no probe motion to request
    px, py = _DIRECTIONS[direction]
    d_probe = rot.T @ np.array([px, py, 0.0])  # the patient direction in probe coordinates
    if action == "slide":
        xy = np.array([d_probe[0], d_probe[1]])
        n = float(np.linalg.norm(xy)) or 1.0
        return MotionRequest((float(xy[0] / n * m), float(xy[1] / n * m), 0.0), ZERO3)
    if action == "tilt":  # +rx swings the beam toward probe -y
        return MotionRequest(ZERO3, (-math.copysign(m, d_probe[1]), 0.0, 0.0))
    return MotionRequest(ZERO3, (0.0, math.copysign(m, d_probe[0]), 0.0))  # rock: +ry toward probe +x
