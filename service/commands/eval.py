"""`sonoguide eval`: closed-loop episodes with the simulated novice (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=60, help="episodes per arm (default 60)")
    p.add_argument("--seed-base", type=int, default=200000, help="first phantom seed (>= 200000)")
    p.add_argument("--novice-noise", type=float, default=0.3, help="novice imprecision 0..1 (default 0.3)")
    p.add_argument(
        "--preset", default="all", help="abdomen, vascular, cardiac, or all (cycled by seed; default)"
    )
    p.add_argument("--fps", type=float, default=10.0, help="simulated frame rate (default 10)")
    p.add_argument("--limit-s", type=float, default=60.0, help="simulated seconds per episode (default 60)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU core)")
    p.add_argument(
        "--tracking", choices=("model", "full"), default="model",
        help="camera arm's tracker: the measured tracker model (default) or the real tracking chain on "
        "rendered camera frames (slow: use a few episodes)",
    )  # fmt: skip
    p.add_argument(
        "--model", type=Path, default=None, metavar="DIR",
        help="model folder to evaluate (default: the newest shipped one), e.g. a candidate not yet shipped",
    )  # fmt: skip
    p.add_argument(
        "--arms", default="all",
        help="comma-separated arms to run: guided, camera, unguided, oracle (default all)",
    )  # fmt: skip
    p.add_argument(
        "--json", type=Path, metavar="FILE", default=Path("build/eval/eval.json"),
        help="figures and per-episode records (default build/eval/eval.json)",
    )  # fmt: skip
    p.add_argument(
        "--plots", type=Path, metavar="DIR", default=Path("build/eval/plots"),
        help="PNG plots folder (default build/eval/plots)",
    )  # fmt: skip


def write_json(path: Path, body: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker: parallel over episodes
    from service.tools.evaluate.metrics import ARMS
    from service.tools.evaluate.runner import check_seeds, load_model, report, run_all
    from sim.presets import PRESETS

    preset = None if args.preset == "all" else args.preset
    problems = []
    if preset is not None and preset not in PRESETS:
        problems.append(f"--preset {args.preset!r}: choose all or one of {', '.join(sorted(PRESETS))}")
    if not 0.0 <= args.novice_noise <= 1.0:
        problems.append(f"--novice-noise {args.novice_noise}: must be within [0, 1]")
    arms = ARMS if args.arms == "all" else tuple(a.strip() for a in args.arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        problems.append(f"--arms {args.arms!r}: choose all or some of {', '.join(ARMS)}")
    if args.fps <= 0 or args.limit_s <= 0:
        problems.append("--fps and --limit-s must be positive")
    try:
        check_seeds(args.seed_base, args.episodes)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        for p in problems:
            print(f"sonoguide eval: {p}", file=sys.stderr)
        return 2
    model_dir = str(args.model) if args.model else ""
    _, choice = load_model(model_dir)
    if model_dir and choice.kind == "heuristic":
        print(f"sonoguide eval: --model {args.model}: {choice.reason}", file=sys.stderr)
        return 2
    if choice.kind == "heuristic":
        log.warning(
            "EVALUATING THE HEURISTIC PLACEHOLDER, NOT THE ONNX MODEL: %s. Its guidance knows no pose "
            "(it never tells the novice where to go); the figures say nothing about the real model.",
            choice.reason,
        )
        print(f"WARNING: model = heuristic placeholder ({choice.reason})", file=sys.stderr)
    t0 = time.monotonic()

    def progress(done: int, total: int) -> None:
        print(f"  episode {done}/{total} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    results = run_all(
        args.episodes, args.seed_base, args.novice_noise, preset, args.fps, args.limit_s,
        args.workers or None, progress, arms, args.tracking, model_dir,
    )  # fmt: skip
    settings = {
        "preset": args.preset,
        "novice_noise": args.novice_noise,
        "seed_base": args.seed_base,
        "fps": args.fps,
        "limit_s": args.limit_s,
        "arms": list(arms),
        "tracking": args.tracking,
        "model_dir": model_dir or "shipped",
    }
    body = report(results, choice, settings, time.monotonic() - t0)
    from service.tools.evaluate.plots import write_plots

    try:
        body["plots"] = write_plots(results, args.plots, args.limit_s)
    except RuntimeError as e:
        print(f"sonoguide eval: {e}", file=sys.stderr)
        return 1
    write_json(args.json, body)
    shown = {k: v for k, v in body.items() if k not in ("episodes", "goals")}
    print(json.dumps(shown, indent=2))
    print(f"written: {args.json}, plots in {args.plots}")
    for key, goal in body["goals"].items():
        verdict = {True: "met", False: "NOT met", None: "no figure"}[goal["met"]]
        print(f"goal {key} {goal['goal']}: {goal['value']} -> {verdict}")
    return 0
