"""PNG figures of an evaluation run, drawn with Pillow (the ``dev`` extra; imported lazily here only).

A few line charts do not justify matplotlib: :class:`Chart` maps data to pixels, draws axes, ticks,
labels and a legend, and writes the PNG atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.tools.evaluate.metrics import LIMIT_S, PLANE_DEG, PLANE_MM, EpisodeResult, success_curve

COLOURS = {
    "guided": (31, 119, 180),
    "camera": (148, 103, 189),
    "unguided": (214, 39, 40),
    "oracle": (44, 160, 44),
}
GREY = (150, 150, 150)


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = -(-lo // step) * step
    ticks, v = [], start
    while v <= hi + 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


class Chart:
    def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float],
                 ylim: tuple[float, float], size: tuple[int, int] = (720, 460)) -> None:  # fmt: skip
        from PIL import Image, ImageDraw, ImageFont

        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default(size=14)
        self.small = ImageFont.load_default(size=12)
        self.xlim, self.ylim = xlim, ylim
        w, h = size
        self.box = (70, 40, w - 20, h - 55)  # left, top, right, bottom of the plot area
        self.legend: list[tuple[str, tuple[int, int, int]]] = []
        x0, y0, x1, y1 = self.box
        self.draw.text((w / 2, 12), title, fill="black", font=self.font, anchor="mt")
        self.draw.text(((x0 + x1) / 2, h - 18), xlabel, fill="black", font=self.font, anchor="mm")
        self.draw.text((14, (y0 + y1) / 2), ylabel, fill="black", font=self.font, anchor="lm")
        for t in _nice_ticks(*xlim):
            px = self.px(t, ylim[0])[0]
            self.draw.line([(px, y0), (px, y1)], fill=(235, 235, 235))
            self.draw.text((px, y1 + 6), f"{t:g}", fill="black", font=self.small, anchor="mt")
        for t in _nice_ticks(*ylim):
            py = self.px(xlim[0], t)[1]
            self.draw.line([(x0, py), (x1, py)], fill=(235, 235, 235))
            self.draw.text((x0 - 6, py), f"{t + 0.0:g}", fill="black", font=self.small, anchor="rm")
        self.draw.rectangle(self.box, outline="black")

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        fx, fy = min(max(fx, -0.01), 1.01), min(max(fy, -0.01), 1.01)  # clip into the frame
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def line(self, xs: Sequence[float], ys: Sequence[float], colour: tuple[int, int, int],
             label: str | None = None, width: int = 2) -> None:  # fmt: skip
        pts = [self.px(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(pts) >= 2:
            self.draw.line(pts, fill=colour, width=width, joint="curve")
        if label:
            self.legend.append((label, colour))

    def hline(self, y: float, colour: tuple[int, int, int] = GREY) -> None:
        a, b = self.px(self.xlim[0], y), self.px(self.xlim[1], y)
        self.draw.line([a, b], fill=colour, width=1)

    def save(self, path: Path) -> Path:
        _x0, y0, x1, _ = self.box
        for i, (label, colour) in enumerate(self.legend):
            y = y0 + 12 + 18 * i
            self.draw.line([(x1 - 170, y), (x1 - 145, y)], fill=colour, width=3)
            self.draw.text((x1 - 140, y), label, fill="black", font=self.small, anchor="lm")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.image.save(tmp, format="PNG")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path


def _steps(times: Sequence[float | None], limit_s: float) -> tuple[list[float], list[float]]:
    grid = [i * limit_s / 300 for i in range(301)]
    return grid, success_curve(times, grid)


def plot_success(results: Sequence[EpisodeResult], path: Path, limit_s: float = LIMIT_S) -> Path:
    chart = Chart("Episodes at the plane (5 mm, 8°, gain and depth right) by time",
                  "simulated time (s)", "", (0, limit_s), (0, 1))  # fmt: skip
    for arm, colour in COLOURS.items():
        times = [r.time_to_plane_s for r in results if r.arm == arm]
        if times:
            xs, ys = _steps(times, limit_s)
            chart.line(xs, ys, colour, f"{arm} ({sum(t is not None for t in times)}/{len(times)})")
    return chart.save(path)


def plot_trajectories(results: Sequence[EpisodeResult], path: Path, n: int = 3,
                      limit_s: float = LIMIT_S) -> Path:  # fmt: skip
    """Distance to the standard view over time for the first ``n`` episodes of each arm."""
    seeds = sorted({r.seed for r in results})[:n]
    top = max((p[1] for r in results if r.seed in seeds for p in r.trajectory), default=100.0)
    chart = Chart("Example trajectories: distance to the target plane", "simulated time (s)",
                  "", (0, limit_s), (0, max(10.0, top * 1.05)))  # fmt: skip
    chart.hline(PLANE_MM, GREY)
    for arm, colour in COLOURS.items():
        for i, r in enumerate(x for x in results if x.arm == arm and x.seed in seeds):
            xs = [p[0] for p in r.trajectory]
            ys = [p[1] for p in r.trajectory]
            chart.line(xs, ys, colour, f"{arm} (mm)" if i == 0 else None, width=1 if i else 2)
    chart.draw.text(chart.px(limit_s * 0.02, PLANE_MM), f"{PLANE_MM:g} mm / {PLANE_DEG:g}°",
                    fill=GREY, font=chart.small, anchor="lb")  # fmt: skip
    return chart.save(path)


def plot_gain(results: Sequence[EpisodeResult], path: Path) -> Path:
    """Gain error (current − best, dB) over the first frames of every guided and oracle episode."""
    curves = [r for r in results if r.arm in ("guided", "camera", "oracle") and r.gain_curve]
    frames = max((len(r.gain_curve) for r in curves), default=10)
    top = max((abs(e) for r in curves for e in r.gain_curve), default=20.0)
    lim = max(5.0, top * 1.05)
    chart = Chart("Gain convergence: current - best gain (dB)", "frame", "", (0, frames - 1), (-lim, lim))
    for y in (-3.0, 3.0):
        chart.hline(y)
    chart.draw.line([chart.px(10, -lim), chart.px(10, lim)], fill=GREY)
    seen: set[str] = set()
    for r in curves:
        label = None if r.arm in seen else r.arm
        seen.add(r.arm)
        chart.line(list(range(len(r.gain_curve))), r.gain_curve, COLOURS[r.arm], label, width=1)
    return chart.save(path)


def write_plots(results: Sequence[EpisodeResult], folder: Path, limit_s: float = LIMIT_S) -> dict[str, Any]:
    """All figures into ``folder``; returns their paths by name."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise RuntimeError("plots need Pillow: pip install -e '.[dev]' (make setup does)") from None
    return {
        "success_vs_time": str(plot_success(results, folder / "success_vs_time.png", limit_s)),
        "trajectories": str(plot_trajectories(results, folder / "trajectories.png", limit_s=limit_s)),
        "gain_convergence": str(plot_gain(results, folder / "gain_convergence.png")),
    }
