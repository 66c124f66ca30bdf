"""Labelled frames from the simulator: randomized phantoms, poses, settings, ground-truth labels.

Each phantom seed gives ``per_phantom`` frames. Everything about a frame follows from
``(preset, seed)`` through one seeded generator, so a dataset is the same on every run and every
machine (the work is split over processes by phantom; the order of the result is fixed).

Seed ranges (written into the manifest): training phantoms use seeds ``TRAIN_SEEDS``, held-out
evaluation ``EVAL_SEEDS``, the closed-loop evaluation seeds ≥ ``CLOSED_LOOP_SEED_MIN``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.phantom import make_phantom
from sim.physics import NOISE_DB
from sim.presets import PRESETS
from sim.sampling import POSE_KINDS, sample_gain_offset, sample_pose, sample_settings
from sim.scanner import Scanner
from sim.truth import ground_truth

log = logging.getLogger(__name__)

PRESET_ORDER = ("abdomen", "vascular", "cardiac")
TRAIN_SEEDS = (0, 9999)
EVAL_SEEDS = (100000, 199999)
CLOSED_LOOP_SEED_MIN = 200000
POSE_KIND_PROBS = {"near": 0.45, "far": 0.25, "light": 0.15, "air": 0.15}
NOISY_SCANNER_P = 0.5  # share of phantoms imaged by a scanner with a raised noise floor
NOISE_RAISE_DB = 22.0  # up to this much above sim.physics.NOISE_DB


@dataclass
class Frames:
    """A set of labelled frames (arrays share the first axis)."""

    images: np.ndarray  # (N, H, W) uint8
    gain_db: np.ndarray  # (N,) current settings
    depth_mm: np.ndarray
    freq_mhz: np.ndarray
    preset: np.ndarray  # (N,) index into PRESET_ORDER
    seed: np.ndarray  # (N,) phantom seed
    gain_error_db: np.ndarray  # labels
    best_depth_mm: np.ndarray
    target_visible: np.ndarray
    quality: np.ndarray
    contact: np.ndarray  # (N,) float 0/1
    correction_mm: np.ndarray  # (N, 3)
    correction_deg: np.ndarray  # (N, 3)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray | slice) -> Frames:
        return Frames(**{k: v[index] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: Sequence[Frames]) -> Frames:
        keys = Frames.__dataclass_fields__
        return Frames(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in keys})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.__dict__)
        tmp.replace(path)  # never leave a half-written cache behind

    @staticmethod
    def load(path: Path) -> Frames:
        with np.load(path) as data:
            return Frames(**{k: data[k] for k in Frames.__dataclass_fields__})


def preset_of_seed(seed: int) -> str:
    return PRESET_ORDER[seed % len(PRESET_ORDER)]


def phantom_frames(seed: int, per_phantom: int, size: int) -> Frames:
    """``per_phantom`` labelled frames of the phantom with this seed (preset from the seed)."""
    name = preset_of_seed(seed)
    preset = PRESETS[name]
    rng = np.random.default_rng([seed, 0xDA7A])
    ph = make_phantom(name, seed)
    # Scanners differ in their noise floor; on a noisy one the depth gain lifts receiver noise to
    # tissue-like grey in the deep field, as a real probe held in the air shows.
    extra_noise_db = float(rng.uniform(0.0, NOISE_RAISE_DB)) if rng.uniform() < NOISY_SCANNER_P else 0.0
    sc = Scanner(ph, size=(size, size), noise_db=NOISE_DB + extra_noise_db)
    kinds = list(POSE_KIND_PROBS)
    probs = np.array([POSE_KIND_PROBS[k] for k in kinds])
    rows: list[dict[str, object]] = []
    images = np.zeros((per_phantom, size, size), np.uint8)
    for i in range(per_phantom):
        kind = str(rng.choice(kinds, p=probs))
        assert kind in POSE_KINDS
        pose = sample_pose(ph, rng, kind)
        first = ground_truth(ph, pose, preset.default)
        settings = sample_settings(preset, rng, depth_hint_mm=first.best_depth_mm)
        gt = ground_truth(ph, pose, settings)
        offset = sample_gain_offset(rng)
        gain = preset.clamp_gain(gt.best_gain_db + offset) if gt.contact else preset.clamp_gain(30.0 + offset)
        settings = settings.replace(gain_db=round(gain, 1))
        images[i] = sc.render(pose, settings, frame_index=int(rng.integers(1 << 20)))
        rows.append(
            {
                "gain_db": settings.gain_db,
                "depth_mm": settings.depth_mm,
                "freq_mhz": settings.freq_mhz,
                # The best gain does not depend on the current gain; without contact it is the current one.
                "gain_error_db": settings.gain_db - gt.best_gain_db if gt.contact else 0.0,
                "best_depth_mm": gt.best_depth_mm,
                "target_visible": gt.target_visible,
                "quality": gt.quality,
                "contact": float(gt.contact),
                "correction_mm": gt.correction_mm,
                "correction_deg": gt.correction_deg,
            }
        )

    def col(key: str, dtype: type = np.float32) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=dtype)

    return Frames(
        images=images,
        gain_db=col("gain_db"),
        depth_mm=col("depth_mm"),
        freq_mhz=col("freq_mhz"),
        preset=np.full(per_phantom, PRESET_ORDER.index(name), np.int8),
        seed=np.full(per_phantom, seed, np.int64),
        gain_error_db=col("gain_error_db"),
        best_depth_mm=col("best_depth_mm"),
        target_visible=col("target_visible"),
        quality=col("quality"),
        contact=col("contact"),
        correction_mm=col("correction_mm"),
        correction_deg=col("correction_deg"),
    )


def _job(args: tuple[int, int, int]) -> Frames:
    return phantom_frames(*args)


def generate(seeds: Iterable[int], per_phantom: int, size: int, workers: int = 1) -> Frames:
    """Frames of every seed, in seed order (the same whatever ``workers`` is)."""
    jobs = [(int(s), per_phantom, size) for s in seeds]
    if not jobs:
        raise ValueError("no phantom seeds given")
    if workers <= 1:
        parts = [_job(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(pool.imap(_job, jobs, chunksize=4))
    return Frames.concat(parts)


SIM_DIR = Path(__file__).resolve().parents[1] / "sim"


def simulator_digest(sim_dir: Path = SIM_DIR) -> str:
    """sha256 of the simulator's code: a cache made by another revision of it is never reused. Taken
    over the syntax trees, so editing a comment or the layout does not re-render 20 000 frames."""
    h = hashlib.sha256()
    for path in sorted(sim_dir.glob("*.py")):
        h.update(path.name.encode() + b"\0" + ast.dump(ast.parse(path.read_text())).encode())
    return h.hexdigest()[:16]


def cached_generate(cache_dir: Path, seeds: range, per_phantom: int, size: int, workers: int = 1) -> Frames:
    """``generate`` with an on-disk cache keyed on everything that decides the frames."""
    key = json.dumps(
        {
            "seeds": [seeds.start, seeds.stop],
            "per": per_phantom,
            "size": size,
            "kinds": POSE_KIND_PROBS,
            "noise": [NOISY_SCANNER_P, NOISE_RAISE_DB],
            "sim": simulator_digest(),
            "v": 1,
        },
        sort_keys=True,
    )
    path = cache_dir / f"frames-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        log.info("dataset: cached %s", path)
        return Frames.load(path)
    log.info("dataset: rendering %d phantoms x %d frames (%d workers)", len(seeds), per_phantom, workers)
    frames = generate(seeds, per_phantom, size, workers)
    frames.save(path)
    return frames
