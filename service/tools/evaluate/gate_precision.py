"""How often the camera arm's "you are at the view" signals are right, frame by frame.

"Hold still", "good view" and the automatic capture rest on the target belief's correction being
within the guidance's tolerance and the image agreeing (the frame's quality at the agreeing share of
the model's score at the view). This runs camera-arm episodes (the real pipeline, as ``sonoguide
eval``) and records, for every tracked frame, what those signals said and where the probe truly was,
then tabulates candidate gates: how many frames each passes, the share of them at the plane (within
5 mm / 8°, the eval's success), the share far from it (over 8 mm or 12°) and the share of at-plane
frames it passes (recall). A gate worth shipping needs a high share at the plane; with the shipped
model none reaches it (docs/evaluation.md), which is why the automatic capture waits for a sharper
view score (issue 17).

A second table scores the signs of the frame's own correction and of the belief's per axis, by band
of the true correction: near the view (4-15 mm or degrees) is where the last approach is decided.

The truth is read here, by the diagnostic, after each frame: nothing in the pipeline sees it.

Run: ``python -m service.tools.evaluate.gate_precision [--seed-base 300000] [--episodes 24]``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.policy.belief import AXES
from service.policy.guidance import GuidanceParams, within_tolerance
from service.tools.evaluate.metrics import at_plane

FAR_MM, FAR_DEG = 8.0, 12.0


@dataclass(frozen=True)
class GateFrame:
    """One tracked frame of a camera-arm episode."""

    distance_mm: float  # truth: from the standard view
    angle_deg: float
    estimate: np.ndarray  # (6,) the belief's correction to its target (not a probing move)
    spread: np.ndarray  # (6,) the belief's spread
    shown: np.ndarray  # (6,) the correction shown (a probing move differs from ``estimate``)
    quality: float
    agreeing_quality: float  # the quality the image must reach to agree, as the guidance takes it
    model: np.ndarray  # (6,) the frame's own correction (the clip head's when there is one)
    model_sd: np.ndarray | None  # (6,) its spread, when the model gives one
    truth: np.ndarray | None = None  # (6,) truth: the probe-frame motion to the standard view


def within(c: np.ndarray, tol_mm: float, tol_deg: float) -> np.ndarray:
    """Per row of (N, 6) corrections: within the tolerances by the guidance's own rule."""
    return np.array([within_tolerance(row[:3], row[3:], tol_mm, tol_deg) for row in c], bool)


def gates(
    frames: Sequence[GateFrame],
    tol_mm: float = GuidanceParams.tolerance_mm,
    tol_deg: float = GuidanceParams.tolerance_deg,
) -> dict[str, np.ndarray]:
    """Candidate gates, one boolean per frame each (the first two are what the service uses)."""
    est = np.array([f.estimate for f in frames]).reshape(-1, 6)
    spread = np.array([f.spread for f in frames]).reshape(-1, 6)
    model = np.array([f.model for f in frames]).reshape(-1, 6)
    q = np.array([f.quality for f in frames])
    agree_q = np.array([f.agreeing_quality for f in frames])
    belief_there = within(est, tol_mm, tol_deg)
    image_agrees = belief_there & (q >= agree_q)
    out = {
        "belief within tolerance": belief_there,
        "+ image agrees (shipped)": image_agrees,
        "+ belief spread <= 2x tolerance": image_agrees & within(spread, 2.0 * tol_mm, 2.0 * tol_deg),
        "+ frame's correction within tolerance": image_agrees & within(model, tol_mm, tol_deg),
    }
    if frames and all(f.model_sd is not None for f in frames):
        sd = np.array([f.model_sd for f in frames]).reshape(-1, 6)
        out["+ frame's correction within 1.5 sd"] = image_agrees & (np.abs(model / sd).max(axis=1) <= 1.5)
    return out


def gate_table(frames: Sequence[GateFrame]) -> list[dict[str, Any]]:
    """Per gate: frames passed, share at the plane, share far, recall of the at-plane frames."""
    d = np.array([f.distance_mm for f in frames])
    a = np.array([f.angle_deg for f in frames])
    at = np.array([at_plane(x, y) for x, y in zip(d, a, strict=True)], bool)
    far = (d > FAR_MM) | (a > FAR_DEG)
    rows = []
    for name, passed in gates(frames).items():
        n = int(passed.sum())
        rows.append(
            {
                "gate": name,
                "frames": n,
                "at_plane": float(at[passed].mean()) if n else float("nan"),
                "far": float(far[passed].mean()) if n else float("nan"),
                "recall": float(passed[at].mean()) if at.any() else float("nan"),
            }
        )
    return rows


# Bands of the true correction per axis (mm or deg): near the view (just outside the 4 mm / 4°
# tolerance) is where the last approach is decided.
SIGN_BANDS = ((4.0, 8.0), (8.0, 15.0), (15.0, 30.0), (30.0, math.inf))


def sign_by_band(frames: Sequence[GateFrame], min_frames: int = 50) -> list[dict[str, Any]]:
    """Per band of the true correction and axis: how often the frame's own correction and the belief's
    point the right way (shares; None with fewer than ``min_frames`` frames in the cell)."""
    with_truth = [f for f in frames if f.truth is not None]
    truth = np.array([f.truth for f in with_truth]).reshape(-1, 6)
    own = np.array([f.model for f in with_truth]).reshape(-1, 6)
    belief = np.array([f.estimate for f in with_truth]).reshape(-1, 6)
    rows = []
    for lo, hi in SIGN_BANDS:
        row: dict[str, Any] = {"band": (lo, hi)}
        for i, axis in enumerate(AXES):
            cell = (np.abs(truth[:, i]) >= lo) & (np.abs(truth[:, i]) < hi)
            n = int(cell.sum())
            right = np.sign(truth[cell, i])
            row[axis] = (
                None
                if n < min_frames
                else (
                    float(np.mean(np.sign(own[cell, i]) == right)),
                    float(np.mean(np.sign(belief[cell, i]) == right)),
                    n,
                )
            )
        rows.append(row)
    return rows


def probing_at_plane(frames: Sequence[GateFrame]) -> tuple[int, int]:
    """(at-plane frames showing a probing move instead of the belief's correction, at-plane frames)."""
    at = [f for f in frames if at_plane(f.distance_mm, f.angle_deg)]
    return sum(1 for f in at if np.max(np.abs(f.shown - f.estimate)) > 0.5), len(at)


def recorder(frames: list[GateFrame], target: Any) -> Callable[[Any, Any], None]:
    """An ``on_frame`` hook for :func:`~service.tools.evaluate.episode.run_episode` that appends a
    :class:`GateFrame` for every frame the belief answered with a tracked pose."""
    from sim.truth import pose_error

    def on_frame(pose: Any, pipeline: Any) -> None:
        step, work, guide = pipeline.belief_step, pipeline.last_guided, pipeline.belief
        if step is None or step.estimate is None or step.correction is None or work is None or guide is None:
            return
        out = work.output
        distance, angle = pose_error(pose, target)
        # GuidanceEngine.update's threshold for the image agreeing with the belief
        agree = min(pipeline.guidance.params.good_quality, guide.agreeing_quality())
        frames.append(
            GateFrame(
                distance, angle, np.array(step.estimate.correction, float), np.array(step.estimate.spread, float),
                np.array(step.correction, float), float(out.quality), float(agree),
                np.array([*out.correction_mm, *out.correction_deg], float),
                None if out.correction_sd is None else np.array(out.correction_sd, float),
                np.concatenate(pose.motion_to(target)).astype(float),
            )
        )  # fmt: skip

    return on_frame


def record_episode(seed: int, noise: float, limit_s: float, model_dir: str = "") -> list[GateFrame]:
    """One camera-arm episode (as ``sonoguide eval`` runs it) and its tracked frames."""
    from service.tools.evaluate.episode import EpisodeSpec, run_episode
    from service.tools.evaluate.runner import load_model
    from sim.phantom import make_phantom

    spec = EpisodeSpec.draw(seed, None)
    ph = make_phantom(spec.preset, seed)
    model, _ = load_model(model_dir)
    frames: list[GateFrame] = []
    run_episode(spec, "camera", lambda: model, noise, limit_s=limit_s, phantom=ph,
                on_frame=recorder(frames, ph.target_pose))  # fmt: skip
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.tools.evaluate.gate_precision", description=__doc__)
    p.add_argument("--seed-base", type=int, default=300000)
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--novice-noise", type=float, default=0.3)
    p.add_argument("--limit-s", type=float, default=60.0)
    p.add_argument("--model", default="", help="model folder (default: the shipped model)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    from service.tools.evaluate.runner import check_seeds

    check_seeds(args.seed_base, args.episodes)
    seeds = range(args.seed_base, args.seed_base + args.episodes)
    n = len(seeds)
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        per_episode = list(
            pool.map(record_episode, seeds, [args.novice_noise] * n, [args.limit_s] * n, [args.model] * n)
        )
    frames = [f for episode in per_episode for f in episode]
    probing, at = probing_at_plane(frames)
    print(f"{len(frames)} tracked frames, {at} at the plane ({probing} of them showing a probing move)")
    print(f"{'gate':42s} {'frames':>7s} {'at plane':>9s} {'far':>6s} {'recall':>7s}")
    for row in gate_table(frames):
        print(
            f"{row['gate']:42s} {row['frames']:7d} {row['at_plane']:9.2f} {row['far']:6.2f} {row['recall']:7.2f}"
        )
    print(
        "\nsign right, the frame's own correction / the belief's (frames), by the true correction per axis:"
    )
    for row in sign_by_band(frames):
        lo, hi = row["band"]
        cells = [
            f"{a} -" if row[a] is None else f"{a} {row[a][0]:.2f}/{row[a][1]:.2f} ({row[a][2]})" for a in AXES
        ]
        print(f"  {lo:g}-{hi:g}: " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
