"""Clip-head training windows from the states the closed loop visits (DAgger-style data for issue 17).

Runs ``sonoguide eval``'s episodes (camera and guided arms) on **training** phantom seeds and records,
for every frame the clip head read, exactly the head's inputs as the service built them (the frame
model's features of this and the kept earlier frames, the tracked motion between them, the "tracked"
flags) with the simulator's truth at the pose the frame was taken at. ``models.clip_head --loop-data``
trains on them beside the rendered trajectories: the head then learns where the loop needs it (near
the view, turned or tilted off it, on the plateau of a broad view score), not only on random poses.

    python -m service.tools.evaluate.loop_windows --seeds 5000:5100 --out build/loop-windows.npz

Only seeds below the closed-loop range (``CLOSED_LOOP_SEED_MIN``) are accepted: episodes measured by
``sonoguide eval`` never train the head.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CLOSED_LOOP_SEED_MIN = 200_000  # sonoguide eval's seeds start here
ARMS = ("camera", "guided")
# The frame model's own correction: what the head's training windows keep beside its inputs.
FIELDS = ("features", "motion", "truth", "visible", "contact", "frame_correction", "group")


def record(
    seed: int, arm: str, model_dir: str = "", every: int = 2, noise: float = 0.3, limit_s: float | None = None
) -> dict[str, np.ndarray]:
    """One episode's clip-head inputs and truths, every ``every``-th frame the head read (neighbouring
    frames are nearly the same window; empty arrays when the model has no clip head). Features are
    kept as float16 (the head's inputs come from an INT8 model: nothing is lost)."""
    from service.tools.evaluate.episode import EpisodeSpec, run_episode
    from service.tools.evaluate.runner import load_model
    from sim.phantom import make_phantom
    from sim.truth import ground_truth

    if seed >= CLOSED_LOOP_SEED_MIN:
        raise ValueError(
            f"seed {seed} is in the closed-loop range (>= {CLOSED_LOOP_SEED_MIN}): not for training"
        )
    spec = EpisodeSpec.draw(seed, None)
    ph = make_phantom(spec.preset, seed)
    model, _ = load_model(model_dir)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows: dict[str, list[Any]] = {k: [] for k in FIELDS}
    with_clip = getattr(model, "with_clip", None)
    if with_clip is None:
        return {k: np.zeros((0,)) for k in FIELDS}

    def recording_with_clip(out: Any, features: np.ndarray, motion: np.ndarray) -> Any:
        own = np.array([*out.correction_mm, *out.correction_deg], np.float32)
        pending.append((np.asarray(features[0], np.float32), np.asarray(motion[0], np.float32), own))
        return with_clip(out, features, motion)

    model.with_clip = recording_with_clip  # type: ignore[attr-defined]  # this process's own copy

    seen = [0]

    def on_frame(pose: Any, pipeline: Any) -> None:
        if not pending:
            return
        features, motion, own = pending.pop()
        pending.clear()
        seen[0] += 1
        if (seen[0] - 1) % every:
            return
        work = pipeline.last_guided
        settings = spec.start_settings
        if work is not None and "depth_mm" in work.params:
            settings = settings.replace(depth_mm=float(work.params["depth_mm"]))
        gt = ground_truth(ph, pose, settings)
        rows["features"].append(features)
        rows["motion"].append(motion)
        rows["truth"].append(np.concatenate([gt.correction_mm, gt.correction_deg]).astype(np.float32))
        rows["visible"].append(float(gt.target_visible))
        rows["contact"].append(float(gt.contact))
        rows["frame_correction"].append(own)
        rows["group"].append(seed)

    from service.tools.evaluate.metrics import LIMIT_S

    run_episode(spec, arm, lambda: model, noise, limit_s=LIMIT_S if limit_s is None else limit_s, phantom=ph,
                on_frame=on_frame)  # fmt: skip
    types = {"features": np.float16, "group": np.int64}
    return {k: np.array(v, types.get(k, np.float32)) for k, v in rows.items()}


def _job(args: tuple[int, str, str, int]) -> dict[str, np.ndarray]:
    return record(*args)


def collect(
    seeds: Sequence[int], arms: Sequence[str] = ARMS, model_dir: str = "", workers: int = 1, every: int = 2
) -> dict[str, np.ndarray]:
    jobs = [(int(s), arm, model_dir, every) for s in seeds for arm in arms]
    if workers <= 1:
        parts = [_job(j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(pool.imap(_job, jobs))
    parts = [p for p in parts if len(p["truth"])]
    if not parts:
        raise ValueError("no clip-head windows recorded (does the model have a clip head?)")
    return {k: np.concatenate([p[k] for p in parts]) for k in FIELDS}


def save(data: dict[str, np.ndarray], path: Path) -> None:
    """Written whole or not at all (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
    tmp.replace(path)


def parse_seeds(text: str) -> range:
    lo, _, hi = text.partition(":")
    try:
        seeds = range(int(lo), int(hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be FIRST:END, got {text!r}") from None
    if not seeds or seeds.stop > CLOSED_LOOP_SEED_MIN:
        raise argparse.ArgumentTypeError(
            f"seeds {text!r}: need a non-empty range below {CLOSED_LOOP_SEED_MIN}"
        )
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=parse_seeds, required=True, help="training phantom seeds FIRST:END")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="", help="model folder (default: the newest shipped one)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--every", type=int, default=2, help="keep every N-th frame (default 2)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    data = collect(args.seeds, tuple(args.arms.split(",")), args.model, args.workers, args.every)
    save(data, args.out)
    print(
        f"{len(data['truth'])} windows from {len(args.seeds)} phantoms in {time.monotonic() - t0:.0f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
