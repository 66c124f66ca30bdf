"""Frame sequences along novice-like probe trajectories, for the clip model (``models.clip_head``).

A single frame cannot say which side of the view plane the probe is on; how the picture changes while
the probe moves can. These sequences show that: each starts at a loop-like pose on the skin (near the
view more often than far, as the closed loop visits them) and moves the way a novice does after an
instruction — holds with tremor, one- or two-axis motions at a novice's speeds, each for 0.5–2 s —
rendered at the closed loop's frame rate with the ground truth of every frame and the probe's pose
(what the camera would track). Seeded by phantom seed: the same on every machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.dataset import NOISE_RAISE_DB, NOISY_SCANNER_P, PRESET_ORDER, preset_of_seed
from sim.novice import on_skin
from sim.phantom import make_phantom
from sim.physics import NOISE_DB
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.truth import ground_truth
from sim.types import Pose

log = logging.getLogger(__name__)

FPS = 10.0  # the closed loop's frame rate (`sonoguide eval --fps` default)
FRAMES = 40  # per trajectory (4 s)
SPEED_MM_S = (3.0, 15.0)  # sim.novice.NoviceUser moves at up to 15 mm/s and 25 deg/s
SPEED_DEG_S = (4.0, 25.0)
SEGMENT_S = (0.5, 2.0)
TREMOR_MM, TREMOR_DEG = 0.15, 0.25  # per frame, random
MAX_DISTANCE_MM, MAX_TURN_DEG = 70.0, 50.0


@dataclass
class Sequences:
    """Frames of many trajectories, trajectory-major: ``images[i, t]``."""

    images: np.ndarray  # (N, T, H, W) uint8
    depth_mm: np.ndarray  # (N,) one setting per trajectory
    freq_mhz: np.ndarray  # (N,)
    seed: np.ndarray  # (N,) phantom seed
    preset: np.ndarray  # (N,) index into PRESET_ORDER
    position_mm: np.ndarray  # (N, T, 3) probe pose, patient frame
    rotation: np.ndarray  # (N, T, 3, 3)
    correction: np.ndarray  # (N, T, 6) ground truth: mm (dx dy dz), deg (rx ry rz)
    visible: np.ndarray  # (N, T)
    quality: np.ndarray  # (N, T)
    contact: np.ndarray  # (N, T) 0/1

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concat(parts: list[Sequences]) -> Sequences:
        keys = Sequences.__dataclass_fields__
        return Sequences(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in keys})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self.__dict__)
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> Sequences:
        with np.load(path) as data:
            return Sequences(**{k: data[k] for k in Sequences.__dataclass_fields__})


def _start_pose(ph: object, rng: np.random.Generator) -> Pose:
    d = MAX_DISTANCE_MM * float(rng.uniform()) ** 1.5
    phi = float(rng.uniform(0, 2 * np.pi))
    s = float(rng.uniform()) ** 1.5
    rot = [rng.uniform(-20, 20) * s, rng.uniform(-20, 20) * s, rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG) * s]
    target: Pose = ph.target_pose  # type: ignore[attr-defined]
    return on_skin(ph, target.apply_motion([d * math.cos(phi), d * math.sin(phi), 0.0], rot))  # type: ignore[arg-type]


def motion_plan(rng: np.random.Generator, frames: int = FRAMES, fps: float = FPS) -> np.ndarray:
    """(frames, 6) probe-frame velocity per frame (mm/s, deg/s): holds, one- and two-axis moves.
    Press (dz) is left to the skin: the face is kept on it."""
    v = np.zeros((frames, 6))
    t = 0
    while t < frames:
        n = max(1, int(np.rint(rng.uniform(*SEGMENT_S) * fps)))
        kind = rng.choice(["hold", "one", "two"], p=[0.25, 0.5, 0.25])
        seg = np.zeros(6)
        if kind != "hold":
            for axis in rng.choice([0, 1, 3, 4, 5], size=1 if kind == "one" else 2, replace=False):
                lo, hi = SPEED_MM_S if axis < 3 else SPEED_DEG_S
                seg[axis] = rng.uniform(lo, hi) * rng.choice([-1.0, 1.0])
        v[t : t + n] = seg
        t += n
    return v


def trajectory(seed: int, index: int, size: int = 128, frames: int = FRAMES) -> Sequences:
    """One trajectory on the phantom with this seed (``index`` tells several apart)."""
    name = preset_of_seed(seed)
    preset = PRESETS[name]
    rng = np.random.default_rng([seed, index, 0xC11B])
    ph = make_phantom(name, seed)
    extra_noise_db = float(rng.uniform(0.0, NOISE_RAISE_DB)) if rng.uniform() < NOISY_SCANNER_P else 0.0
    sc = Scanner(ph, size=(size, size), noise_db=NOISE_DB + extra_noise_db)
    standard = ground_truth(ph, ph.target_pose, preset.default)
    settings = preset.default.replace(depth_mm=standard.best_depth_mm)
    pose = _start_pose(ph, rng)
    first = ground_truth(ph, pose, settings)
    gain = preset.clamp_gain((first.best_gain_db if first.contact else 30.0) + float(rng.uniform(-4, 4)))
    settings = settings.replace(gain_db=round(gain, 1))
    plan = motion_plan(rng, frames)
    images = np.zeros((frames, size, size), np.uint8)
    pos, rot = np.zeros((frames, 3)), np.zeros((frames, 3, 3))
    corr, vis, qual, cont = np.zeros((frames, 6)), np.zeros(frames), np.zeros(frames), np.zeros(frames)
    for t in range(frames):
        if t:
            step = plan[t] / FPS
            step[:3] += rng.normal(0, TREMOR_MM, 3)
            step[3:] += rng.normal(0, TREMOR_DEG, 3)
            step[2] = 0.0
            moved = on_skin(ph, pose.apply_motion(step[:3], step[3:]))
            off_mm, off_deg = moved.motion_to(ph.target_pose)
            # A novice who wanders far off comes back: reverse the rest of this motion.
            if np.linalg.norm(off_mm[:2]) > MAX_DISTANCE_MM or np.linalg.norm(off_deg) > MAX_TURN_DEG:
                plan[t:] *= -1.0
            else:
                pose = moved
        gt = ground_truth(ph, pose, settings)
        images[t] = sc.render(pose, settings, frame_index=int(rng.integers(1 << 20)))
        pos[t], rot[t] = pose.position_mm, pose.rotation_matrix()
        corr[t] = np.concatenate([gt.correction_mm, gt.correction_deg])
        vis[t], qual[t], cont[t] = gt.target_visible, gt.quality, float(gt.contact)
    return Sequences(
        images=images[None],
        depth_mm=np.array([settings.depth_mm], np.float32),
        freq_mhz=np.array([settings.freq_mhz], np.float32),
        seed=np.array([seed], np.int64),
        preset=np.array([PRESET_ORDER.index(name)], np.int8),
        position_mm=pos[None],
        rotation=rot[None],
        correction=corr[None],
        visible=vis[None],
        quality=qual[None],
        contact=cont[None],
    )


def _job(args: tuple[int, int, int]) -> Sequences:
    seed, per, size = args
    return Sequences.concat([trajectory(seed, i, size) for i in range(per)])


def generate(seeds: Iterable[int], per_phantom: int, size: int = 128, workers: int = 1) -> Sequences:
    jobs = [(int(s), per_phantom, size) for s in seeds]
    if not jobs:
        raise ValueError("no phantom seeds given")
    if workers <= 1:
        return Sequences.concat([_job(j) for j in jobs])
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        return Sequences.concat(list(pool.imap(_job, jobs, chunksize=4)))


def cached_generate(
    cache: Path, seeds: range, per_phantom: int, size: int = 128, workers: int = 1
) -> Sequences:
    import hashlib
    import json

    from models.dataset import simulator_digest

    key = json.dumps(
        {"seeds": [seeds.start, seeds.stop], "per": per_phantom, "size": size, "frames": FRAMES,
         "sim": simulator_digest(), "v": 1},
        sort_keys=True,
    )  # fmt: skip
    path = cache / f"sequences-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        return Sequences.load(path)
    log.info(
        "clip data: rendering %d phantoms x %d trajectories (%d workers)", len(seeds), per_phantom, workers
    )
    seqs = generate(seeds, per_phantom, size, workers)
    seqs.save(path)
    return seqs
