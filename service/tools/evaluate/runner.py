"""Episodes over worker processes, the model under test, and the report.

Each job is one episode seed with all three arms, so the phantom and the scanner's caches are built
once per episode. Workers load their own model (an ONNX Runtime session cannot cross processes)
with one intra-op thread: the parallelism is over episodes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from models.goals import goals_report
from service.daemon.inference import HeuristicModel
from service.seams import Model
from service.tools.evaluate.episode import EpisodeSpec, run_episode
from service.tools.evaluate.metrics import ARMS, LIMIT_S, EpisodeResult, aggregate

log = logging.getLogger(__name__)

# Phantom seeds used to make the model (models/dataset.py): training 0-9999, held out 100000-199999.
# The closed-loop evaluation must stay off both.
RESERVED_SEEDS = ((0, 9999), (100000, 199999))
CLOSED_LOOP_SEED_MIN = 200000

GOALS = {
    "success_rate": (">=", 0.95),
    "median_time_to_plane_s": ("<=", 20.0),
    "speedup_vs_unguided": (">=", 3.0),
    "gain_converged_rate": (">=", 0.98),
    "depth_ok_rate": (">=", 0.95),
    "flicker_per_s": ("<=", 0.2),
}


def check_seeds(seed_base: int, episodes: int) -> None:
    """ValueError when the episodes' phantom seeds overlap the model's training or held-out seeds."""
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    last = seed_base + episodes - 1
    for lo, hi in RESERVED_SEEDS:
        if seed_base <= hi and last >= lo:
            raise ValueError(
                f"seeds {seed_base}..{last} overlap the model's seeds {lo}..{hi}; "
                f"closed-loop evaluation uses seeds >= {CLOSED_LOOP_SEED_MIN}"
            )


@dataclass(frozen=True)
class ModelChoice:
    kind: str  # "onnx" | "heuristic"
    name: str
    version: str
    provider: str
    reason: str = ""


def load_model(folder: str = "") -> tuple[Model, ModelChoice]:
    """The ONNX model in ``folder`` ("" = the newest shipped one) on one CPU thread when this build has
    it, else the heuristic placeholder."""
    try:
        from service.daemon import onnx_model as onnxmodel
    except ImportError as e:
        return _heuristic(f"service.daemon.onnx_model is not in this build ({e})")
    config = SimpleNamespace(providers=("cpu",), engine_cache=None)
    try:
        model = onnxmodel.load_model(folder, config, threads=1)
    except Exception as e:  # ModelLoadError: no shipped model, damaged files
        return _heuristic(f"the shipped ONNX model cannot be loaded: {e}")
    return model, ModelChoice("onnx", model.name, model.version, model.provider)


def _heuristic(reason: str) -> tuple[Model, ModelChoice]:
    m = HeuristicModel()
    return m, ModelChoice("heuristic", m.name, m.version, m.provider, reason)


_worker_model: Model | None = None


def _init_worker(folder: str = "") -> None:
    global _worker_model
    _worker_model, _ = load_model(folder)


def _worker_factory() -> Model:
    assert _worker_model is not None
    return _worker_model


def run_seed(
    seed: int, preset: str | None, noise: float, fps: float, limit_s: float,
    factory: Callable[[], Model] | None = None, arms: Sequence[str] = ARMS, tracking: str = "model",
) -> list[EpisodeResult]:  # fmt: skip
    """The arms of one episode."""
    from sim.phantom import make_phantom
    from sim.scanner import Scanner

    spec = EpisodeSpec.draw(seed, preset)
    ph = make_phantom(spec.preset, seed)
    sc = Scanner(ph)
    make = factory or _worker_factory
    return [
        run_episode(spec, arm, make, noise, fps, limit_s, phantom=ph, scanner=sc, tracking=tracking)
        for arm in arms
    ]


def run_all(
    episodes: int, seed_base: int, noise: float, preset: str | None = None, fps: float = 10.0,
    limit_s: float = LIMIT_S, workers: int | None = None,
    progress: Callable[[int, int], None] | None = None, arms: Sequence[str] = ARMS, tracking: str = "model",
    model_dir: str = "",
) -> list[EpisodeResult]:  # fmt: skip
    check_seeds(seed_base, episodes)
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"--novice-noise must be within [0, 1], got {noise}")
    seeds = list(range(seed_base, seed_base + episodes))
    workers = max(1, min(workers or os.cpu_count() or 1, episodes))
    results: list[EpisodeResult] = []
    if workers == 1:
        model, _ = load_model(model_dir)
        for i, s in enumerate(seeds):
            results += run_seed(s, preset, noise, fps, limit_s, lambda: model, arms, tracking)
            if progress:
                progress(i + 1, episodes)
        return results
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(model_dir,)) as pool:
        jobs = [pool.submit(run_seed, s, preset, noise, fps, limit_s, None, arms, tracking) for s in seeds]
        for i, job in enumerate(jobs):
            results += job.result()
            if progress:
                progress(i + 1, episodes)
    return results


# The goals that apply to each guided arm (the unguided arm is the baseline, the oracle a bound).
GOAL_ARMS = ("guided", "camera", "oracle")


def arm_goals(figures: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The goals per arm that ran, keyed by the report's figure names (``camera_success_rate``, ...)."""
    out = {}
    for arm in GOAL_ARMS:
        prefix = "" if arm == "guided" else f"{arm}_"
        if figures.get(f"{prefix}success_rate") is None:
            continue  # the arm did not run
        for key, goal in GOALS.items():
            if key != "speedup_vs_unguided" or arm == "guided":
                out[f"{prefix}{key}"] = goal
    return out


def report(
    results: Sequence[EpisodeResult], choice: ModelChoice, args: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    figures = aggregate(results)
    body: dict[str, Any] = {
        "model": choice.kind if choice.kind == "heuristic" else choice.name,
        "model_version": choice.version,
        "model_provider": choice.provider,
        **({"model_note": choice.reason} if choice.reason else {}),
        **args,
        **figures,
        "goals": goals_report(figures, arm_goals(figures)),
        "n_episodes": len({r.seed for r in results}),
        "wall_s": round(wall_s, 1),
        "episodes": [r.summary() for r in results],
    }
    return body


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    return fn(), time.monotonic() - t0
