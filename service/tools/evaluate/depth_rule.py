"""How auto depth's choice of step frames the target, measured on held-out frames at the view.

Auto depth turns the model's best depth (mm, continuous) into one of the probe's depth steps
(:func:`service.policy.autotune.depth_step_for`). Where between two steps the choice flips is the
``boundary`` (share of the gap above the shallower step; 0.5: the nearest step). This measures, per
preset, the share of frames whose chosen step frames the standard view's target at 60–90% of the
depth (``metrics.depth_ok``, what the closed loop's ``depth_ok_rate`` counts), for several
boundaries, from one frame each (no median: the harder case).

Frames: held-out phantoms (``models.dataset.EVAL_SEEDS``, never trained on), the probe within a few
mm and degrees of the standard view on the skin, at a random depth step of the preset and the best
gain. The simulator's truth judges the framing; nothing here runs in the service.

Run: ``python -m service.tools.evaluate.depth_rule [--model DIR] [--phantoms 150]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import EVAL_SEEDS, PRESET_ORDER
from models.evaluate import run_onnx_inputs
from service.policy.autotune import depth_step_for
from service.tools.evaluate.metrics import depth_ok
from sim.novice import on_skin
from sim.phantom import make_phantom
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.truth import ground_truth

BOUNDARIES = (0.5, 0.35, 0.25, 0.15, 0.0)
FRAMES_PER_PHANTOM = 4


def near_view_frames(n_phantoms: int, size: int = 128) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Frames near the standard view on held-out phantoms: (phantom per frame, model inputs)."""
    phantoms, images, depth, freq = [], [], [], []
    for i in range(n_phantoms):
        seed = EVAL_SEEDS[0] + 11 * i + 3
        name = PRESET_ORDER[seed % len(PRESET_ORDER)]
        preset = PRESETS[name]
        ph = make_phantom(name, seed)
        scanner = Scanner(ph, size=(size, size))
        rng = np.random.default_rng([seed, 0xDE9])
        for k in range(FRAMES_PER_PHANTOM):
            shift = rng.normal(0.0, 2.0, 3) * [1.0, 1.0, 0.0]
            pose = on_skin(ph, ph.target_pose.apply_motion(list(shift), list(rng.normal(0.0, 2.0, 3))))
            settings = preset.default.replace(depth_mm=float(rng.choice(preset.depth_steps_mm)))
            gt = ground_truth(ph, pose, settings)
            if not gt.contact:
                continue
            settings = settings.replace(gain_db=preset.clamp_gain(gt.best_gain_db))
            images.append(scanner.render(pose, settings, frame_index=k))
            depth.append(settings.depth_mm)
            freq.append(settings.freq_mhz)
            phantoms.append(ph)
    inputs = {
        "images": np.array(images),
        "depth_mm": np.array(depth, np.float32),
        "freq_mhz": np.array(freq, np.float32),
    }
    return phantoms, inputs


def framed_share(
    phantoms: Sequence[Any], best_depth_mm: np.ndarray, boundaries: Sequence[float] = BOUNDARIES
) -> dict[str, dict[str, float]]:
    """Per boundary and preset: the share of frames whose chosen step frames the target at 60–90%."""
    framed: dict[tuple[int, float], bool] = {}  # (phantom, step) -> depth_ok at the standard view
    out: dict[str, dict[str, float]] = {}
    for boundary in boundaries:
        hits: dict[str, list[bool]] = {name: [] for name in PRESET_ORDER}
        for ph, best in zip(phantoms, best_depth_mm, strict=True):
            steps = ph.preset.depth_steps_mm
            step = depth_step_for(float(best), float("nan"), steps, 0.0, boundary)
            key = (id(ph), step)
            if key not in framed:
                standard = ground_truth(ph, ph.target_pose, ph.preset.default.replace(depth_mm=step))
                framed[key] = depth_ok(standard.target_fill)
            hits[ph.preset.name].append(framed[key])
        out[f"{boundary:.2f}"] = {name: round(float(np.mean(v)), 3) for name, v in hits.items() if v}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the newest shipped)")
    parser.add_argument("--phantoms", type=int, default=150)
    args = parser.parse_args(argv)
    from service.daemon.onnx_model import read_manifest, shipped_model_dir

    folder = args.model or shipped_model_dir()
    manifest = read_manifest(folder)
    phantoms, inputs = near_view_frames(args.phantoms)
    pred = run_onnx_inputs(
        folder / manifest["model_file"], inputs["images"], inputs["depth_mm"], inputs["freq_mhz"]
    )
    best = np.asarray(pred["best_depth_mm"], float).ravel()
    print(f"model {folder.name}, {len(best)} frames on {args.phantoms} held-out phantoms")
    print("share framed at 60-90% of the depth (one frame, no median), per boundary:")
    for boundary, shares in framed_share(phantoms, best).items():
        print(f"  boundary {boundary}: " + ", ".join(f"{n} {v:.3f}" for n, v in shares.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
