"""What the target belief (``service.policy.belief``) needs to know about the model and the patients,
measured here and written into the manifest's ``guidance`` section, so the service never hard-codes it:

- ``prior``: per preset, where the standard view's probe pose lies in the patient frame across the
  **training** phantoms (seeds ``TRAIN_SEEDS``): the mean pose and the covariance of the offsets from it
  (translation mm in the patient frame, rotation vector degrees in the mean's probe frame).
- ``observation``: how the model's pose correction relates to the true one on **held-out** phantoms
  (seeds ``EVAL_SEEDS``), at poses like those the closed loop visits (on the skin, 0–80 mm and 0–60°
  from the view, gain and depth near right), per axis and per band of the model's own
  ``target_visible``: the gain (slope of output on truth), the spread of the rest (1σ) and how often
  the sign is flipped. Frames far from the view carry little: small gains, wide spreads.
- ``quality`` and ``visibility``: how the model's view quality and target visibility fall off with
  the true correction, per probe-frame axis (``q ≈ exp(−½ Σ (c_a/s_a)²)``), and the spread of the
  rest: the belief's "here" and "not here" evidence, which needs no sign.

``python -m models.guidance_calibration MODEL_DIR`` measures and writes it into ``MODEL_DIR``'s
manifest; ``models.build`` calls :func:`calibrate` on the model it makes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import EVAL_SEEDS, PRESET_ORDER, TRAIN_SEEDS
from models.evaluate import AXES, run_onnx_inputs
from sim.novice import on_skin
from sim.phantom import make_phantom
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.truth import ground_truth
from sim.types import Pose, matrix_to_rotvec

log = logging.getLogger(__name__)

# Bands of the model's target_visible output: far (target out of view), partly seen, seen.
VISIBLE_BANDS = (0.0, 0.3, 0.7, 1.01)
PRIOR_PHANTOMS = 300  # training phantoms per preset for the population prior
FRAMES_PER_PHANTOM = 12
HELD_OUT_PHANTOMS = 150  # phantoms (all presets) for the observation model
MAX_DISTANCE_MM = 80.0
MAX_TURN_DEG = 60.0


def population_prior(presets: tuple[str, ...] = PRESET_ORDER, n: int = PRIOR_PHANTOMS) -> dict[str, Any]:
    """Mean standard-view pose and offset covariance per preset, from training phantoms only."""
    out: dict[str, Any] = {}
    lo = TRAIN_SEEDS[0]
    for name in presets:
        poses = [make_phantom(name, lo + i).target_pose for i in range(n)]
        pos = np.array([p.position_mm for p in poses])
        rots = np.array([p.rotation_matrix() for p in poses])
        u, _, vt = np.linalg.svd(rots.sum(axis=0))  # chordal mean of the rotations
        mean_r = u @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)))]) @ vt
        mean_p = pos.mean(axis=0)
        offsets = np.array(
            [
                np.concatenate([p - mean_p, matrix_to_rotvec(mean_r.T @ r)])
                for p, r in zip(pos, rots, strict=True)
            ]
        )
        mean_pose = Pose.from_matrix(mean_p, mean_r)
        out[name] = {
            "phantoms": n,
            "seeds": [lo, lo + n - 1],
            "mean_position_mm": [round(float(v), 3) for v in mean_pose.position_mm],
            "mean_quat_wxyz": [round(float(v), 6) for v in mean_pose.quat_wxyz],
            "covariance": [[round(float(v), 3) for v in row] for row in np.cov(offsets.T)],
        }
    return out


def _loop_like_pose(ph: Any, rng: np.random.Generator) -> Pose:
    """A probe pose on the skin like those the closed loop visits: near the view more often than far."""
    d = MAX_DISTANCE_MM * float(rng.uniform()) ** 1.5
    phi = float(rng.uniform(0, 2 * np.pi))
    s = float(rng.uniform()) ** 1.5
    rot = [rng.uniform(-20, 20) * s, rng.uniform(-20, 20) * s, rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG) * s]
    return on_skin(ph, ph.target_pose.apply_motion([d * math.cos(phi), d * math.sin(phi), 0.0], rot))


def held_out_samples(
    model_path: Path, n_phantoms: int = HELD_OUT_PHANTOMS, size: int = 128
) -> dict[str, np.ndarray]:
    """Model outputs and ground truth on held-out phantoms at loop-like poses and near-right settings."""
    images, depth, freq, truth_c, presets = [], [], [], [], []
    for i in range(n_phantoms):
        seed = EVAL_SEEDS[0] + 7 * i  # spread over the held-out range
        name = PRESET_ORDER[seed % len(PRESET_ORDER)]
        preset = PRESETS[name]
        ph = make_phantom(name, seed)
        sc = Scanner(ph, size=(size, size))
        rng = np.random.default_rng([seed, 0xB311EF])
        standard = ground_truth(ph, ph.target_pose, preset.default)
        for _ in range(FRAMES_PER_PHANTOM):
            pose = _loop_like_pose(ph, rng)
            settings = preset.default.replace(depth_mm=standard.best_depth_mm)
            gt = ground_truth(ph, pose, settings)
            if not gt.contact:
                continue
            settings = settings.replace(
                gain_db=preset.clamp_gain(gt.best_gain_db + float(rng.uniform(-3, 3)))
            )
            images.append(sc.render(pose, settings, frame_index=int(rng.integers(1 << 20))))
            depth.append(settings.depth_mm)
            freq.append(settings.freq_mhz)
            truth_c.append(np.concatenate([gt.correction_mm, gt.correction_deg]))
            presets.append(PRESET_ORDER.index(name))
    pred = run_onnx_inputs(
        model_path, np.array(images), np.array(depth, np.float32), np.array(freq, np.float32)
    )
    return {
        "obs": np.concatenate([pred["correction_mm"], pred["correction_deg"]], axis=1).astype(float),
        "truth": np.array(truth_c, float),
        "visible": pred["target_visible"].astype(float),
        "quality": pred["quality"].astype(float),
        "preset": np.array(presets, int),
    }


def fit_axis(obs: np.ndarray, truth: np.ndarray, iterations: int = 40) -> dict[str, float]:
    """Gain, 1σ spread and sign-flip rate of ``obs ≈ ±gain · truth + noise``: EM on the two-component
    mixture (same and flipped sign, one spread). The flip rate is weighted by truth² — near zero the
    two components coincide and say nothing about flips."""
    gain, sigma, flip = 0.5, max(float(np.std(obs)), 0.5), 0.2
    w = truth**2
    for _ in range(iterations):
        same = (1.0 - flip) * np.exp(-0.5 * ((obs - gain * truth) / sigma) ** 2)
        flipped = flip * np.exp(-0.5 * ((obs + gain * truth) / sigma) ** 2)
        r = flipped / np.maximum(same + flipped, 1e-300)  # responsibility of the flipped sign
        denom = float(np.sum(w))
        if denom <= 0:
            break
        gain = float(np.clip(np.sum((1.0 - 2.0 * r) * obs * truth) / denom, 0.02, 1.5))
        resid2 = (1.0 - r) * (obs - gain * truth) ** 2 + r * (obs + gain * truth) ** 2
        sigma = max(float(np.sqrt(np.mean(resid2))), 0.5)
        flip = float(np.clip(np.sum(w * r) / denom, 0.0, 0.5))
    return {"gain": round(gain, 4), "sigma": round(sigma, 3), "flip": round(flip, 4), "frames": len(obs)}


def fit_score_field(score: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Peak and per-axis scales of ``score ≈ peak · exp(−½ Σ (c_a / s_a)²)`` over the true probe-frame correction
    ``c`` (least squares), and the spread of the rest overall and where the field is high (> 0.3)."""
    from scipy.optimize import least_squares

    def field(x: np.ndarray) -> np.ndarray:
        return np.asarray(x[6] * np.exp(-0.5 * np.sum((truth / np.exp(x[:6])) ** 2, axis=1)))

    start = np.append(np.log(np.full(6, 10.0)), 0.8)
    fit = least_squares(lambda x: field(x) - score, start, bounds=([0.0] * 6 + [0.2], [5.0] * 6 + [1.0]))
    pred = field(fit.x)
    resid = score - pred
    near = pred > 0.3
    return {
        "peak": round(float(fit.x[6]), 4),
        "scales": {a: round(float(v), 3) for a, v in zip(AXES, np.exp(fit.x[:6]), strict=True)},
        "sigma": round(float(np.std(resid)), 4),
        "sigma_near": round(float(np.std(resid[near])), 4)
        if near.sum() > 10
        else round(float(np.std(resid)), 4),
        "frames": len(score),
    }


def per_preset_fields(samples: dict[str, np.ndarray], key: str) -> dict[str, Any]:
    """The score field per preset (targets differ in size, so views fall off at different scales)."""
    return {
        name: fit_score_field(samples[key][samples["preset"] == i], samples["truth"][samples["preset"] == i])
        for i, name in enumerate(PRESET_ORDER)
    }


def observation_model(samples: dict[str, np.ndarray]) -> dict[str, Any]:
    bands = []
    for lo, hi in itertools.pairwise(VISIBLE_BANDS):
        sel = (samples["visible"] >= lo) & (samples["visible"] < hi)
        axes = {a: fit_axis(samples["obs"][sel, i], samples["truth"][sel, i]) for i, a in enumerate(AXES)}
        bands.append({"visible_from": lo, "visible_to": min(hi, 1.0), "frames": int(sel.sum()), "axes": axes})
    return {"visible_bands": bands}


def calibrate(model_dir: Path, n_phantoms: int = HELD_OUT_PHANTOMS) -> dict[str, Any]:
    """The manifest's ``guidance`` section for the model in ``model_dir``."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    started = time.monotonic()
    samples = held_out_samples(model_dir / manifest["model_file"], n_phantoms)
    section = {
        "about": "target belief calibration (models/guidance_calibration.py): population prior from "
        "training phantoms, observation model of the correction and quality from held-out phantoms",
        "prior": population_prior(),
        "observation": observation_model(samples),
        "quality": per_preset_fields(samples, "quality"),
        "visibility": per_preset_fields(samples, "visible"),
        "held_out": {
            "phantoms": n_phantoms,
            "frames": len(samples["quality"]),
            "seeds_from": EVAL_SEEDS[0],
        },
    }
    log.info("guidance calibration: %d frames in %.0f s", len(samples["quality"]), time.monotonic() - started)
    return section


def write_into_manifest(model_dir: Path, section: dict[str, Any]) -> None:
    """Put the section into the manifest (atomically); the model files and their hashes are untouched."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["guidance"] = section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--phantoms", type=int, default=HELD_OUT_PHANTOMS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_into_manifest(args.model_dir, calibrate(args.model_dir, args.phantoms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
