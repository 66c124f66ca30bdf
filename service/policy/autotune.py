"""Auto gain, auto depth and the manual-override pause: pure decision logic, no I/O.

Each controller takes the model's judgement and the probe's current setting and returns either
``None`` (leave it) or a :class:`Change` with its reason; the pipeline applies it through the probe
link (which reads the value back) and publishes it. Time comes in as an argument.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

# The model's contact (0-1) at or above which the probe images tissue: auto-tuning, the contact guard,
# the skin memory and the target belief act on such frames only.
SKIN_CONTACT = 0.5


@dataclass(frozen=True)
class ProbeLimits:
    """What the probe allows (from ``link.info`` capabilities)."""

    gain_min_db: float = 0.0
    gain_max_db: float = 90.0
    gain_step_db: float = 1.0
    depth_steps_mm: tuple[float, ...] = (40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 180.0, 210.0, 240.0)
    freqs_mhz: tuple[float, ...] = (2.5, 3.5, 5.0, 7.5)

    def __post_init__(self) -> None:
        if not self.gain_min_db < self.gain_max_db or self.gain_step_db <= 0:
            raise ValueError(
                f"bad gain range {self.gain_min_db}..{self.gain_max_db} step {self.gain_step_db}"
            )
        if not self.depth_steps_mm or list(self.depth_steps_mm) != sorted(set(self.depth_steps_mm)):
            raise ValueError(f"depth steps must be increasing and non-empty, got {self.depth_steps_mm}")
        if not self.freqs_mhz:
            raise ValueError("the probe must offer at least one frequency")

    def quantize_gain(self, gain_db: float) -> float:
        """Nearest gain the probe can set: on its step grid, inside its range."""
        steps = round((gain_db - self.gain_min_db) / self.gain_step_db)
        value = self.gain_min_db + steps * self.gain_step_db
        return float(min(max(value, self.gain_min_db), self.gain_max_db))

    def nearest_depth(self, depth_mm: float) -> float:
        return float(min(self.depth_steps_mm, key=lambda d: (abs(d - depth_mm), d)))

    def nearest_freq(self, freq_mhz: float) -> float:
        return float(min(self.freqs_mhz, key=lambda f: (abs(f - freq_mhz), f)))


@dataclass(frozen=True)
class Change:
    param: str  # "gain_db" | "depth_mm"
    old: float
    new: float
    reason: str


@dataclass(frozen=True)
class GainParams:
    dead_band_db: float = 2.0  # leave the gain alone while |error| is below this
    coarse_above_db: float = 6.0  # errors beyond this are corrected in one step ...
    coarse_frames: int = 2  # ... once this many frames in a row said so (one wild frame must not)
    coarse_max_db: float = 18.0  # ... by at most this: the model misreads burnt-out and black images
    max_step_db: float = 3.0  # inside the coarse band: fine steps of at most this, on a smoothed error
    settle_s: float = 0.25  # after a change, ignore frames taken before the image could follow
    smoothing: float = 0.5  # weight of the newest error in the running estimate (1 = no smoothing)
    fine_frames: int = 2  # frames averaged before a fine step (one noisy frame must not move the gain)


class AutoGain:
    """Coarse-then-fine: one big step to the model's estimate, then bounded fine steps, settle time.

    A big error (beyond ``coarse_above_db``) is corrected at once by the whole estimate (bounded by the
    probe's range): the model reads the error to about 1 dB, so waiting for several small steps only
    costs frames. Near the best gain the estimate is averaged over ``fine_frames`` frames and moved by
    at most ``max_step_db``, so noise cannot make it hunt. The error is measured, not integrated: after
    each change we wait ``settle_s`` and restart the running estimate, so the controller never acts
    twice on the same stale error (the classic cause of oscillation with a delayed plant). Inside the
    dead band nothing happens, so once the error is small the gain stays put.
    """

    def __init__(self, limits: ProbeLimits, params: GainParams | None = None) -> None:
        self.limits = limits
        self.params = params or GainParams()
        self._estimate: float | None = None
        self._frames = 0
        self._quiet_until = -math.inf

    def reset(self, now: float) -> None:
        """Forget the running estimate (after any gain or depth change, ours or the user's)."""
        self._estimate = None
        self._frames = 0
        self._quiet_until = now + self.params.settle_s

    def update(self, gain_error_db: float, current_gain_db: float, now: float) -> Change | None:
        if now < self._quiet_until or not math.isfinite(gain_error_db):
            return None
        p = self.params
        a = p.smoothing
        self._estimate = (
            gain_error_db if self._estimate is None else a * gain_error_db + (1 - a) * self._estimate
        )
        self._frames += 1
        error = self._estimate
        if abs(error) < p.dead_band_db:
            return None
        if abs(gain_error_db) > p.coarse_above_db and abs(error) > p.coarse_above_db:
            if self._frames < p.coarse_frames:
                return None
            step = max(-p.coarse_max_db, min(p.coarse_max_db, -gain_error_db))  # the whole way at once
        elif self._frames < p.fine_frames:
            return None
        else:
            step = max(-p.max_step_db, min(p.max_step_db, -error))
        target = self.limits.quantize_gain(current_gain_db + step)
        if target == self.limits.quantize_gain(current_gain_db):
            return None  # at the end of the range, or the step rounds to nothing
        self.reset(now)
        word = "too bright" if error > 0 else "too dark"
        return Change("gain_db", current_gain_db, target, f"image {word} by {abs(error):.1f} dB")


@dataclass(frozen=True)
class ContactGuardParams:
    lost_below: float = 0.15  # the model's contact under this: it sees no skin at all
    lost_s: float = 1.0  # ... for this long
    moved_db: float = 6.0  # ... with the gain this far from where it last saw skin
    # ... or, with the camera saying the probe was not lifted, raise the gain this much per ``lost_s``:
    # the probe slid over tissue that needs more gain than the last gain with skin (a rib shadow).
    search_step_db: float = 10.0


class ContactGainGuard:
    """Undo a gain that made the image look like air.

    The model reads a very dark (or burnt-out) image as no skin contact, and auto gain acts only on
    frames with contact: after one bad step the probe would stay dark with "more gel" on the screen for
    good (seen in the closed loop: 40 dB too dark, 30 s). When contact has been gone ``lost_s`` and the
    gain is ``moved_db`` or more from the gain of the last frame with contact, go back to that gain,
    once per loss. A probe really lifted off the skin loses nothing by it: that gain was fine.

    A probe that slid into tissue needing far more gain (best gain at the probe's top, the image black
    at the last gain with skin) looks lifted too. When the caller knows the probe is still on the skin
    (``on_skin``: the camera saw no lift since the last contact), the gain is raised ``search_step_db``
    every ``lost_s`` up to the probe's top, and brought back to where the search began if even the top
    shows no skin (then it is the gel, not the gain), once per loss.
    """

    def __init__(self, limits: ProbeLimits | None = None, params: ContactGuardParams | None = None) -> None:
        self.limits = limits or ProbeLimits()
        self.params = params or ContactGuardParams()
        self._gain_with_contact: float | None = None
        self._lost_since: float | None = None
        self._search_from: float | None = None  # the gain the search for a darker region began at
        self._search_over = False

    def update(self, contact: float, gain_db: float, now: float, on_skin: bool = False) -> Change | None:
        p = self.params
        if contact >= SKIN_CONTACT or self._gain_with_contact is None:  # the first frame's gain until then
            self._gain_with_contact = gain_db
        if contact >= SKIN_CONTACT:
            self._lost_since, self._search_from, self._search_over = None, None, False
            return None
        if contact >= p.lost_below:
            return None
        if self._lost_since is None:
            self._lost_since = now
            return None
        if now - self._lost_since < p.lost_s:
            return None
        good = self._gain_with_contact
        if self._search_from is None and abs(gain_db - good) >= p.moved_db:
            self._lost_since = None
            return Change(
                "gain_db",
                gain_db,
                good,
                f"no skin contact seen since the gain moved from {good:g} dB: back to it",
            )
        if not on_skin or self._search_over:
            return None
        self._lost_since = None  # the next step after another ``lost_s`` at the new gain
        if self._search_from is None:
            self._search_from = gain_db
        top = self.limits.quantize_gain(self.limits.gain_max_db)
        if gain_db >= top:
            self._search_over = True
            start = self._search_from
            if start >= top:
                return None
            return Change(
                "gain_db",
                gain_db,
                start,
                f"no skin contact seen up to {top:g} dB with the probe on the skin: back to {start:g} dB",
            )
        return Change(
            "gain_db",
            gain_db,
            self.limits.quantize_gain(gain_db + p.search_step_db),
            "no skin contact seen, yet the camera saw no lift: a darker region? gain up",
        )


class SkinMemory:
    """Whether a tracked probe is still on the skin where the model last saw contact: it has not moved
    back along its beam axis by more than ``lift_mm`` since (sliding along the skin moves it across)."""

    def __init__(self, lift_mm: float = 3.0, shadow_s: float = 3.0) -> None:
        self.lift_mm = lift_mm
        self.shadow_s = shadow_s
        self._contact: tuple[np.ndarray, np.ndarray] | None = None  # face position, beam axis
        self._dark_since: float | None = None

    def note(self, contact: float, position: np.ndarray | None, rotation: np.ndarray | None) -> None:
        if contact >= SKIN_CONTACT and position is not None and rotation is not None:
            self._contact = (np.array(position), np.array(rotation)[:, 2])  # copies: the caller's may change

    def forget(self) -> None:
        self._contact, self._dark_since = None, None

    def shadowed(self, contact: float, on_skin: bool, now: float) -> bool:
        """No contact for ``shadow_s`` while the probe stayed on the skin: the beam is in a shadow (a
        rib, gas) that the probe must leave, not a probe to put back on the skin with gel."""
        if contact >= SKIN_CONTACT or not on_skin:
            self._dark_since = None
            return False
        if self._dark_since is None:
            self._dark_since = now
        return now - self._dark_since >= self.shadow_s

    def on_skin(self, position: np.ndarray | None) -> bool:
        if self._contact is None or position is None:
            return False
        face, beam = self._contact
        lifted = -float(np.dot(np.subtract(position, face), beam))
        return lifted <= self.lift_mm


@dataclass(frozen=True)
class DepthParams:
    dwell_s: float = 1.0  # the recommendation must hold this long before we act
    min_interval_s: float = 1.0  # at most one change per this many seconds
    window_s: float = 1.0  # the model's best depth is the median over this window (one frame is noisy)
    margin: float = 0.2  # of the gap to the neighbour step: the median must pass the boundary by this
    # Where between two neighbouring steps the choice flips, as a share of the gap above the shallower
    # (0.5: the nearest step). The best depth is the *shallowest* step that frames the target at most
    # at 90% of the depth; one step deeper still frames it (60-90%) while one shallower cuts it off,
    # so a best depth anywhere above a step asks for the next one (docs/service.md, "Auto depth").
    boundary: float = 0.0


def depth_step_for(
    best_depth_mm: float, current_mm: float, steps: tuple[float, ...], margin: float, boundary: float = 0.5
) -> float:
    """The depth step for a best depth, with hysteresis toward ``current_mm``.

    Between two neighbouring steps the choice flips at ``boundary`` of the gap above the shallower
    (0.5: the nearest step wins; ties go to the shallower). The current step keeps its place until
    the best depth lies past that boundary by ``margin`` of the gap: a best depth hovering at a
    boundary does not make the depth hop between two steps.
    """

    def edge(lo: int) -> float:  # the boundary between steps[lo] and steps[lo + 1]
        return steps[lo] + boundary * (steps[lo + 1] - steps[lo])

    chosen = next((steps[k] for k in range(len(steps) - 1) if best_depth_mm <= edge(k)), steps[-1])
    i = next((k for k, d in enumerate(steps) if abs(d - current_mm) < 1e-6), None)
    if i is None or chosen == steps[i]:
        return float(chosen)
    deeper = chosen > steps[i]
    lo = i if deeper else i - 1
    past = (best_depth_mm - edge(lo)) * (1 if deeper else -1)
    return float(chosen) if past >= margin * (steps[lo + 1] - steps[lo]) else float(steps[i])


class AutoDepth:
    """Chooses the probe depth step for the model's best depth: median over a window, hysteresis
    between neighbouring steps, a dwell, and at most one change per ``min_interval_s``."""

    def __init__(self, limits: ProbeLimits, params: DepthParams | None = None) -> None:
        self.limits = limits
        self.params = params or DepthParams()
        self._candidate: float | None = None
        self._candidate_since = 0.0
        self._last_change = -math.inf
        self._recent: list[tuple[float, float]] = []  # (time, best depth) within the window

    def reset(self, now: float) -> None:
        self._candidate = None
        self._last_change = now
        self._recent.clear()  # judged at the old depth: start afresh at the new one

    def recommend(self, best_depth_mm: float) -> float:
        """The step for a best depth, without hysteresis (no current step to hold to)."""
        return depth_step_for(best_depth_mm, math.nan, self.limits.depth_steps_mm, 0.0, self.params.boundary)

    def update(self, best_depth_mm: float, current_depth_mm: float, now: float) -> Change | None:
        if not math.isfinite(best_depth_mm):
            return None
        p = self.params
        self._recent = [(t, d) for t, d in self._recent if now - t < p.window_s]
        self._recent.append((now, best_depth_mm))
        median = float(statistics.median(d for _, d in self._recent))
        rec = depth_step_for(median, current_depth_mm, self.limits.depth_steps_mm, p.margin, p.boundary)
        if rec == current_depth_mm:
            self._candidate = None
            return None
        if rec != self._candidate:
            self._candidate, self._candidate_since = rec, now
            return None
        if now - self._candidate_since < p.dwell_s or now - self._last_change < p.min_interval_s:
            return None
        self.reset(now)
        word = "deeper" if rec > current_depth_mm else "shallower"
        return Change(
            "depth_mm",
            current_depth_mm,
            rec,
            f"target needs a {word} view (best {median:.0f} mm, stable {p.dwell_s:.1f} s)",
        )


class ManualOverride:
    """A manual change wins: auto-tuning of that parameter pauses for ``pause_s``."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s = pause_s
        self._until: dict[str, float] = {}

    def note_manual(self, param: str, now: float) -> float:
        """Record a manual change of ``param``; returns when auto-tuning may resume."""
        self._until[param] = now + self.pause_s
        return self._until[param]

    def paused(self, param: str, now: float) -> bool:
        return now < self._until.get(param, -math.inf)

    def remaining(self, param: str, now: float) -> float:
        return max(0.0, self._until.get(param, -math.inf) - now)


class ManualChangeDetector:
    """Spots settings changed behind our back (probe buttons) in the frames' parameter snapshots.

    We know what we set; a snapshot value that differs from every value we set or saw recently is
    somebody else's change. Two races make our own changes look foreign, and both are excused:
    frames taken *before* a change of ours still arrive afterwards (values we moved away from within
    ``grace_s`` are ours), and the device applies a value and streams frames with it *before* its
    read-back reaches us (a value :meth:`announce`-d for the change in flight is ours).
    """

    def __init__(self, tolerance: float = 1e-3, grace_s: float = 1.0) -> None:
        self.tolerance = tolerance
        self.grace_s = grace_s
        self._known: dict[str, float] = {}
        self._recent: dict[str, list[tuple[float, float]]] = {}  # param -> [(old value, left at)]
        self._pending: dict[str, tuple[float, float]] = {}  # param -> (requested value, slack)

    def announce(self, param: str, value: float, slack: float = 0.0) -> None:
        """We are about to set ``param`` to ``value`` (the device may snap it by up to ``slack``)."""
        self._pending[param] = (value, slack)

    def cancel(self, param: str) -> None:
        """The announced change did not happen (the device refused it)."""
        self._pending.pop(param, None)

    def expect(self, param: str, value: float, now: float) -> None:
        """``param`` is now ``value``: set by us (auto or a command, read back) or reported by the probe."""
        self._pending.pop(param, None)
        recent = [(v, t) for v, t in self._recent.get(param, []) if now - t < self.grace_s]
        known = self._known.get(param)
        if known is not None and abs(known - value) > self.tolerance:
            recent.append((known, now))
        self._recent[param] = recent
        self._known[param] = value

    def stale(self, param: str, value: float, now: float) -> bool:
        """True for a frame taken before one of our changes: its value is one we just moved away from."""
        known = self._known.get(param)
        if known is None or abs(known - value) <= self.tolerance or self._in_flight(param, value):
            return False
        return self._left_recently(param, value, now)

    def _in_flight(self, param: str, value: float) -> bool:
        """``value`` is the one announced for our change in flight (applied, read-back not here yet)."""
        pending = self._pending.get(param)
        return pending is not None and abs(pending[0] - value) <= pending[1] + self.tolerance

    def _left_recently(self, param: str, value: float, now: float) -> bool:
        return any(
            abs(v - value) <= self.tolerance and now - t < self.grace_s
            for v, t in self._recent.get(param, [])
        )

    def observe(self, param: str, value: float, now: float) -> bool:
        """A frame says ``param`` is ``value``; True when that is a manual change."""
        known = self._known.get(param)
        if known is None:
            self._known[param] = value
            return False
        if abs(known - value) <= self.tolerance:
            return False
        if self._in_flight(param, value):
            return False  # our change in flight: applied, read-back not here yet
        if self._left_recently(param, value, now):
            return False  # a frame from before one of our changes
        self.expect(param, value, now)
        return True
