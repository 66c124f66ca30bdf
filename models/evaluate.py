"""Held-out evaluation through ONNX Runtime: per-head errors, the acceptance metrics, latency.

Metric definitions (also in the manifest and MODEL_CARD.md):

- ``gain_mae_db``: mean |predicted − true gain error| over frames with skin contact.
- ``depth_within_one_step``: share of contact frames whose predicted best depth, snapped to the
  preset's nearest depth step, is at most one step from the true best depth step.
- ``direction_correct``: share of frames with the target visible (true target_visible ≥ 0.05) and a
  correction worth making (|t| ≥ 4 mm or |r| ≥ 4°) where the predicted correction points the right
  way: its dot product with the true one is positive, translation in units of 4 mm and rotation in
  units of 4° (the guidance tolerances). Following it a small step brings the probe nearer the view.
- per axis: sign agreement of each component where the true component is beyond its tolerance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import PRESET_ORDER, Frames
from models.inputs import prepare_images, prepare_scalars
from sim.presets import PRESETS

VISIBLE_MIN = 0.05
TOL_MM = 4.0
TOL_DEG = 4.0
AXES = ("dx", "dy", "dz", "rx", "ry", "rz")


def run_onnx(path: Path, frames: Frames, threads: int = 1, batch: int = 64) -> dict[str, np.ndarray]:
    return run_onnx_inputs(path, frames.images, frames.depth_mm, frames.freq_mhz, threads, batch)


def run_onnx_inputs(
    path: Path,
    grey: np.ndarray,
    depth_mm: np.ndarray,
    freq_mhz: np.ndarray,
    threads: int = 1,
    batch: int = 64,
) -> dict[str, np.ndarray]:
    """Outputs by name for (N, H, W) grey frames at the model's input size and their settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    images = prepare_images(grey)
    scalars = prepare_scalars(depth_mm, freq_mhz)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(images), batch):
        out = sess.run(names, {"image": images[i : i + batch], "scalars": scalars[i : i + batch]})
        for n, v in zip(names, out, strict=True):
            parts[n].append(v)
    return {
        n: np.concatenate(v).squeeze(-1) if np.concatenate(v).shape[-1] == 1 else np.concatenate(v)
        for n, v in parts.items()
    }


def _step_index(preset_idx: np.ndarray, depth_mm: np.ndarray) -> np.ndarray:
    out = np.zeros(len(depth_mm), int)
    for i, (p, d) in enumerate(zip(preset_idx, depth_mm, strict=True)):
        steps = np.array(sorted(PRESETS[PRESET_ORDER[int(p)]].depth_steps_mm))
        out[i] = int(np.argmin(np.abs(steps - d)))
    return out


def metrics(frames: Frames, pred: dict[str, np.ndarray]) -> dict[str, Any]:
    contact = frames.contact > 0.5
    gain_abs = np.abs(pred["gain_error_db"] - frames.gain_error_db)[contact]
    step_true = _step_index(frames.preset, frames.best_depth_mm)
    step_pred = _step_index(frames.preset, pred["best_depth_mm"])
    depth_ok = (np.abs(step_true - step_pred) <= 1)[contact]
    depth_exact = (step_true == step_pred)[contact]
    true6 = np.concatenate([frames.correction_mm / TOL_MM, frames.correction_deg / TOL_DEG], axis=1)
    pred6 = np.concatenate([pred["correction_mm"] / TOL_MM, pred["correction_deg"] / TOL_DEG], axis=1)
    worth = np.max(np.abs(true6), axis=1) >= 1.0
    visible = (frames.target_visible >= VISIBLE_MIN) & contact & worth
    direction = (np.sum(true6 * pred6, axis=1) > 0)[visible]
    per_axis = {}
    for k, name in enumerate(AXES):
        sel = visible & (np.abs(true6[:, k]) >= 1.0)
        per_axis[name] = (
            round(float(np.mean(np.sign(true6[sel, k]) == np.sign(pred6[sel, k]))), 4) if sel.any() else None
        )
    contact_pred = pred["contact"] > 0.5
    return {
        "frames": len(frames),
        "contact_frames": int(contact.sum()),
        "visible_frames": int(visible.sum()),
        "gain_mae_db": round(float(gain_abs.mean()), 3),
        "gain_p90_abs_db": round(float(np.percentile(gain_abs, 90)), 3),
        "depth_within_one_step": round(float(depth_ok.mean()), 4),
        "depth_exact_step": round(float(depth_exact.mean()), 4),
        "direction_correct": round(float(direction.mean()), 4),
        "direction_sign_by_axis": per_axis,
        "correction_mae_mm": round(
            float(np.mean(np.abs(pred["correction_mm"] - frames.correction_mm)[visible])), 3
        ),
        "correction_mae_deg": round(
            float(np.mean(np.abs(pred["correction_deg"] - frames.correction_deg)[visible])), 3
        ),
        "target_visible_mae": round(
            float(np.mean(np.abs(pred["target_visible"] - frames.target_visible))), 4
        ),
        "quality_mae": round(float(np.mean(np.abs(pred["quality"] - frames.quality))), 4),
        "contact_accuracy": round(float(np.mean(contact_pred == contact)), 4),
    }


def latency_ms(path: Path, runs: int = 200, threads: int = 1) -> dict[str, float]:
    """Batch-of-one latency on the CPU with ``threads`` intra-op threads: median and p90 in ms."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        "image": rng.normal(0, 1, (1, 1, 128, 128)).astype(np.float32),
        "scalars": np.array([[1.0, 0.35]], np.float32),
    }
    for _ in range(20):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(1000 * (time.perf_counter() - t0))
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
    }
