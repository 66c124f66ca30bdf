"""Scoring of closed-loop episodes: the success criteria and the aggregate figures. Pure functions.

Definitions (docs/evaluation.md):

- **at the plane**: face centre within ``PLANE_MM`` (5 mm) and orientation within ``PLANE_DEG`` (8°)
  of the standard view (``sim.truth.pose_error``);
- **gain acceptable**: |current − best gain| ≤ ``GAIN_OK_DB`` (3 dB), best gain from ground truth at
  the imaged pose and settings;
- **depth acceptable**: the target's deepest point in view at 60–90% of the depth
  (``sim.truth`` ``target_fill`` in [0.6, 0.9]): fully in view and filling most of the image;
- **success**: all three at once, with skin contact, within ``LIMIT_S`` (60 s) of simulated time;
  the first such time is the *time to plane*;
- **gain converged**: the gain within ``GAIN_OK_DB`` of the best within ``GAIN_FRAMES`` (10) frames
  of the episode's start;
- **flicker**: changes of the shown instruction per second while the novice holds still (a hold
  window after each episode); ``good_view`` counts as ``hold_still`` (it only adds "captured"); the
  words catching up with the arrival (a first change to "hold still" within ``SETTLE_S`` of the
  window's start) is not flicker (``flicker_changes``);
- **capture rate**: the share of episodes with an automatic capture taken with the probe at the
  plane (on the way, in the hold window, or in the follow-on after it in which the novice follows
  the words again: ``episode.CAPTURE_S``); **off-view captures**: automatic captures taken anywhere
  else, counted over the arm's episodes (each is an image of the wrong view in a patient's record);
- **failures turned about the target**: failed episodes whose end pose images the target through its
  middle and misses the view only by a turn about it (``turned_about_target``): a direction in which
  the simulated anatomy hardly changes (``sim.observability``), so perception has little to go on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PLANE_MM = 5.0
PLANE_DEG = 8.0
THROUGH_MM = 5.0  # the target's centre this near where the standard view images it
GAIN_OK_DB = 3.0
FILL_RANGE = (0.6, 0.9)
LIMIT_S = 60.0
GAIN_FRAMES = 10
ARMS = ("guided", "camera", "unguided", "oracle")
SAME_INSTRUCTION = {"good_view": "hold_still"}
# How long the words may take to say "hold still" once the probe arrived: the filter (0.2 s) and the
# hysteresis (0.3 s), with a frame to spare at 10 Hz.
SETTLE_S = 0.6


def at_plane(distance_mm: float, angle_deg: float) -> bool:
    return distance_mm <= PLANE_MM and angle_deg <= PLANE_DEG


def gain_ok(gain_error_db: float) -> bool:
    return abs(gain_error_db) <= GAIN_OK_DB


def depth_ok(target_fill: float) -> bool:
    return FILL_RANGE[0] <= target_fill <= FILL_RANGE[1]


def flicker_changes(instructions: Sequence[str], settle_frames: int) -> int:
    """Changes of the shown words in a hold window (:func:`count_changes`), less the words catching up
    with the arrival: a first change, within ``settle_frames`` of the window's start, from the move
    that brought the probe there to "hold still" is the guidance doing its job (it lags the probe by
    its filter and hysteresis), not flicker. Every other change counts."""
    ids = [SAME_INSTRUCTION.get(i, i) for i in instructions]
    first = next((k for k in range(1, len(ids)) if ids[k] != ids[k - 1]), None)
    arrival = first is not None and first <= settle_frames and ids[first] == "hold_still"
    return count_changes(ids) - int(arrival)


def count_changes(instructions: Iterable[str]) -> int:
    """How often the shown instruction changed (``good_view`` and ``hold_still`` are one)."""
    changes, last = 0, None
    for ident in instructions:
        ident = SAME_INSTRUCTION.get(ident, ident)
        if last is not None and ident != last:
            changes += 1
        last = ident
    return changes


def turned_about_target(view: dict[str, float]) -> bool:
    """The end pose images the target through its middle (within ``THROUGH_MM`` of where the standard
    view has it) and misses only by turning about it: a pose the image hardly tells from the view."""
    if not view:
        return False
    through = max(abs(view["off_plane_mm"]), abs(view["across_mm"]), abs(view["depth_mm"])) <= THROUGH_MM
    return through and view["angle_deg"] > PLANE_DEG


def first_converged(gain_errors_db: Sequence[float]) -> int | None:
    """Index of the first frame whose gain is acceptable, or None."""
    return next((i for i, e in enumerate(gain_errors_db) if gain_ok(e)), None)


@dataclass
class EpisodeResult:
    seed: int
    preset: str
    arm: str
    noise: float
    success: bool
    time_to_plane_s: float | None
    frames: int
    start_distance_mm: float
    start_angle_deg: float
    start_gain_error_db: float
    start_depth_mm: float
    depth_ok_at_end: bool  # the depth setting frames the target at 60–90% in the standard view
    gain_converged_frame: int | None  # first frame index with |gain error| <= 3 dB
    hold_changes: int = 0
    hold_s: float = 0.0
    auto_changes: int = 0
    lifts: int = 0
    final_distance_mm: float = math.nan
    final_angle_deg: float = math.nan
    captured_at_view: bool = False  # an automatic capture fired with the probe at the plane
    captures_off_view: int = 0  # automatic captures anywhere else
    captures: list[tuple[float, float, float]] = field(default_factory=list)  # (t s, mm, deg) of each
    # Where the target lies in the end pose's image (sim.observability.view_residual): mm off the
    # plane, across, in depth, and the angle left.
    final_view: dict[str, float] = field(default_factory=dict)
    trajectory: list[tuple[float, float, float]] = field(default_factory=list)  # (t, mm, deg)
    gain_curve: list[float] = field(default_factory=list)  # gain error (dB) of the first frames
    instructions: dict[str, int] = field(default_factory=dict)  # frames per shown instruction

    def summary(self) -> dict[str, Any]:
        """The per-episode record in the JSON (no trajectories: those go to the plots)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("trajectory", "gain_curve")}
        for k, v in out.items():
            if isinstance(v, float):
                out[k] = None if math.isnan(v) else round(v, 3)
        return out


def censored_quantile(times: Sequence[float | None], q: float) -> float | None:
    """The q-quantile of times to plane over all episodes, failures counting as never (+inf).

    None when more than the fraction ``1 - q`` of the episodes failed (the quantile lies beyond the
    time limit). Lower interpolation, so the value is one an episode actually took.
    """
    if not times:
        return None
    ordered = sorted(math.inf if t is None else float(t) for t in times)
    k = max(0, math.ceil(q * len(ordered)) - 1)
    value = ordered[k]
    return None if math.isinf(value) else value


def success_curve(times: Sequence[float | None], grid: Sequence[float]) -> list[float]:
    """Fraction of episodes at the plane by each time in ``grid``."""
    n = len(times)
    done = sorted(t for t in times if t is not None)
    out, i = [], 0
    for g in grid:
        while i < len(done) and done[i] <= g:
            i += 1
        out.append(i / n if n else 0.0)
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def aggregate(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """The figures the issue asks for, from every arm's episodes."""
    by_arm: dict[str, list[EpisodeResult]] = {a: [r for r in results if r.arm == a] for a in ARMS}
    out: dict[str, Any] = {}
    for arm, rs in by_arm.items():
        prefix = "" if arm == "guided" else f"{arm}_"
        times = [r.time_to_plane_s for r in rs]
        ok = [r.time_to_plane_s for r in rs if r.time_to_plane_s is not None]
        out[f"{prefix}success_rate"] = _rate([r.success for r in rs])
        out[f"{prefix}median_time_to_plane_s"] = _r(censored_quantile(times, 0.5))
        out[f"{prefix}p90_time_to_plane_s"] = _r(censored_quantile(times, 0.9))
        out[f"{prefix}median_time_successful_s"] = _r(sorted(ok)[(len(ok) - 1) // 2] if ok else None)
        out[f"{prefix}gain_converged_rate"] = _rate(
            [r.gain_converged_frame is not None and r.gain_converged_frame <= GAIN_FRAMES for r in rs]
        )
        out[f"{prefix}depth_ok_rate"] = _rate([r.depth_ok_at_end for r in rs])
        hold = sum(r.hold_s for r in rs)
        out[f"{prefix}flicker_per_s"] = round(sum(r.hold_changes for r in rs) / hold, 4) if hold else None
        out[f"{prefix}capture_rate"] = _rate([r.captured_at_view for r in rs])
        out[f"{prefix}off_view_captures"] = sum(r.captures_off_view for r in rs) if rs else None
        out[f"{prefix}failures_turned_about_target"] = (
            sum(1 for r in rs if not r.success and turned_about_target(r.final_view)) if rs else None
        )
    guided = out["median_time_to_plane_s"]
    unguided = out["unguided_median_time_to_plane_s"]
    # An unguided median beyond the limit counts as the limit: the ratio is then a lower bound.
    if guided:
        base = LIMIT_S if unguided is None else unguided
        out["speedup_vs_unguided"] = round(base / guided, 2)
        out["speedup_is_lower_bound"] = unguided is None
    else:
        out["speedup_vs_unguided"] = None
        out["speedup_is_lower_bound"] = False
    return out
