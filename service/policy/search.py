"""Searching the view along directions the model cannot judge from one image. Pure logic, time passed in.

A plane a little to one side of the target can look much like the plane on the other side, so a
single-frame model may be unsure of the *sign* of out-of-plane corrections (sweep dy, tilt rx, turn
rz): the manifest's ``direction_sign_by_axis`` says how often each axis is right on held-out
phantoms. Following an axis that is right little more than half the time is following a coin. Instead, like a sonographer, we use the image over time: ask for a small move along
one axis, watch whether the view gets better (target visibility and view quality, averaged), keep
going while it does, and reverse with a smaller step when it gets worse (a gradient-following line
search per axis, with hysteresis). Each move is shown for ``move_s`` so the words stay steady.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Probe-frame axes of a pose correction: (index into the 6-vector (dx, dy, dz, rx, ry, rz), unit).
AXES: dict[str, tuple[int, str]] = {
    "dx": (0, "mm"),
    "dy": (1, "mm"),
    "dz": (2, "mm"),
    "rx": (3, "deg"),
    "ry": (4, "deg"),
    "rz": (5, "deg"),
}
SIGN_RELIABLE = 0.65  # sign accuracy below this (0.5 = a coin) and the axis is searched, not followed


def unreliable_axes(manifest: Mapping[str, Any] | None, threshold: float = SIGN_RELIABLE) -> frozenset[str]:
    """Axes whose correction sign the model gets right less often than ``threshold``, from the
    manifest's held-out evaluation (``evaluation.<precision>.direction_sign_by_axis``).

    A model with a clip head: its held-out figures without the camera (``clip.evaluation.untracked``).
    No manifest or no per-axis figures: nothing is known to be unreliable (the model is followed).
    """
    if not manifest:
        return frozenset()
    clip = manifest.get("clip") or {}
    if clip:
        # The service follows the clip head's correction, whose figures without the camera these are.
        untracked = ((clip.get("evaluation") or {}).get("untracked") or {}).get("sign_visible") or {}
        return frozenset(a for a, v in untracked.items() if a in AXES and float(v) < threshold)
    evaluation = manifest.get("evaluation") or {}
    figures = (evaluation.get(str(manifest.get("precision", ""))) or evaluation.get("fp32") or {}).get(
        "direction_sign_by_axis"
    ) or {}
    return frozenset(a for a, v in figures.items() if a in AXES and float(v) < threshold)


@dataclass(frozen=True)
class SearchParams:
    move_s: float = 2.0  # how long one move is shown: reaction + the motion + a look at the result
    look_s: float = 0.6  # the score is averaged over the last this-many seconds of a move
    steps: tuple[tuple[str, float], ...] = (("dy", 8.0), ("rz", 12.0), ("rx", 6.0), ("dx", 10.0))
    min_fraction: float = 0.3  # a step shrinks on each reversal down to this fraction of its size
    better: float = 0.03  # a score change smaller than this is no change (noise)
    max_blind_moves: int = 3  # moves in one direction without any signal before turning back
    # The search never asks for more than this many steps (of the axis's step size) away from where
    # it started on an axis: the view score is noisy, and a search that follows noise walks away.
    max_excursion_steps: float = 2.0


@dataclass(frozen=True)
class SearchMove:
    axis: str  # key of AXES
    amount: float  # signed, mm or degrees, probe frame

    def correction(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The move as a probe-frame (translation mm, rotation deg) pair."""
        v = [0.0] * 6
        v[AXES[self.axis][0]] = self.amount
        return (v[0], v[1], v[2]), (v[3], v[4], v[5])


class AxisSearch:
    """Line search over a list of axes, one move at a time, on an observed score (higher = better).

    ``update(score, now, axes)`` returns the move to show now. After each move the mean score of its
    last ``look_s`` is compared with the previous move's: better → same direction again; worse → back
    the other way with a smaller step (the peak was passed); no signal → on, up to
    ``max_blind_moves``, then back. An axis is done when its step has shrunk to ``min_fraction`` and
    the score stopped improving; then the next axis in ``axes`` takes over, round-robin.
    """

    def __init__(self, params: SearchParams | None = None) -> None:
        self.params = params or SearchParams()
        self._sizes = dict(self.params.steps)
        self.reset()

    def reset(self) -> None:
        self._axis: str | None = None
        self._sign = 1.0
        self._scale = 1.0
        self._move_started = 0.0
        self._samples: list[tuple[float, float]] = []
        self._last_mean: float | None = None
        self._blind = 0
        self._offsets: dict[str, float] = {}  # asked-for motion so far per axis (mm or deg)
        self.move: SearchMove | None = None

    def _mean(self, now: float) -> float | None:
        recent = [s for t, s in self._samples if now - t <= self.params.look_s]
        return sum(recent) / len(recent) if recent else None

    def _next_axis(self, axes: Sequence[str]) -> str:
        order = [a for a, _ in self.params.steps if a in axes]
        if self._axis not in order:
            return order[0]
        return order[(order.index(self._axis) + 1) % len(order)]

    def update(self, score: float, now: float, axes: Sequence[str]) -> SearchMove | None:
        p = self.params
        axes = [a for a in axes if a in self._sizes]
        if not axes:
            self.reset()
            return None
        self._samples.append((now, score))
        if self.move is not None and self._axis in axes and now - self._move_started < p.move_s:
            return self.move
        mean = self._mean(now)
        if self._axis not in axes:
            self._axis, self._sign, self._scale, self._blind = self._next_axis(axes), 1.0, 1.0, 0
        elif mean is not None and self._last_mean is not None:
            change = mean - self._last_mean
            if change > p.better:  # better: keep going
                self._blind = 0
            elif change < -p.better:  # passed the peak: back, smaller
                self._sign, self._blind = -self._sign, 0
                self._scale *= 0.5
            else:  # no signal
                self._blind += 1
                if self._blind >= p.max_blind_moves:
                    self._sign, self._blind = -self._sign, 0
            if self._scale < p.min_fraction:  # this axis is settled: the next one
                self._axis, self._sign, self._scale, self._blind = self._next_axis(axes), 1.0, 1.0, 0
        self._last_mean = mean
        self._samples = [(t, s) for t, s in self._samples if now - t <= p.look_s]
        self._move_started = now
        assert self._axis is not None
        size = self._sizes[self._axis]
        offset = self._offsets.get(self._axis, 0.0)
        amount = bounded_step(offset, self._sign * self._scale * size, p.max_excursion_steps * size)
        if amount * self._sign < 0:
            self._sign = -self._sign  # turned back at the bound
        self._offsets[self._axis] = offset + amount
        self.move = SearchMove(self._axis, amount)
        return self.move


def bounded_step(offset: float, step: float, max_excursion: float) -> float:
    """The step to ask for when ``offset`` has been asked for already on this axis: ``step``, or
    the same size back toward the start when it would end beyond ``max_excursion`` from it."""
    if abs(offset + step) <= max_excursion + 1e-9:
        return step
    return -step if abs(offset - step) <= max_excursion + 1e-9 else -math.copysign(abs(step), offset)
