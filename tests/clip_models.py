"""A model folder with a clip head for tests: the shipped frame model with its features output and a
small head of seeded random weights (no training, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from models.clip_head import CLIP_FILE, PAST_S, head_onnx, write_candidate

ROOT = Path(__file__).resolve().parents[1]
FRAME_MODEL = ROOT / "models/sonoguide-view/1.4.0"
K, D, P, W = len(PAST_S) + 1, 1536, 8, 16


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.2, shape).astype(np.float32)

    n_in = P * K + 7 * (K - 1)
    return {
        "proj_w": w(P, D), "proj_b": w(P), "fc1_w": w(W, n_in), "fc1_b": w(W),
        "fc2_w": w(W, W), "fc2_b": w(W), "out_w": w(12, W), "out_b": w(12),
    }  # fmt: skip


def make_candidate(tmp_path: Path, untracked_signs: dict[str, float], seed: int = 0) -> Path:
    """``tmp_path/candidate``: the folder ``python -m models.clip_head --candidate`` writes."""
    head = tmp_path / CLIP_FILE
    onnx.save(head_onnx(random_weights(seed), np.ones(6), K), str(head))
    figures = {"sign_visible": untracked_signs, "coverage_68": {}, "sign_largest_hidden": 0.7, "windows": 1}
    results = {
        "past_s": list(PAST_S), "train_phantoms": 4,
        **dict.fromkeys(("tracked", "untracked", "still", "frame_model"), figures),
    }  # fmt: skip
    write_candidate(FRAME_MODEL, tmp_path / "candidate", head, results)
    return tmp_path / "candidate"
