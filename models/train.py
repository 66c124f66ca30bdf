"""Training loop: deterministic for a seed (fixed thread count, seeded shuffling and augmentation).

Residual nondeterminism: results are bit-identical for the same seed, torch version and
``TORCH_THREADS``; another thread count or CPU kind may change the last bits of the float sums.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling

from models import net as netmod
from models.augment import augment
from models.dataset import Frames
from models.inputs import prepare_images, prepare_scalars

__all__ = ["TORCH_THREADS", "TrainParams", "prepare_images", "prepare_scalars", "train"]

log = logging.getLogger(__name__)
TORCH_THREADS = 2


@dataclass(frozen=True)
class TrainParams:
    seed: int = 1
    epochs: int = 15
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment_p: float = 0.7  # share of training frames that get augmented


def targets(frames: Frames, gain_delta: np.ndarray, geometry_kept: np.ndarray) -> dict[str, torch.Tensor]:
    gain = frames.gain_error_db + gain_delta * frames.contact  # no contact: gain error 0 by definition
    return {
        "geometry": torch.from_numpy(geometry_kept.astype(np.float32)),
        "gain": torch.from_numpy((gain / netmod.GAIN_UNIT_DB).astype(np.float32)),
        "depth": torch.from_numpy(np.log(frames.best_depth_mm / frames.depth_mm).astype(np.float32)),
        "visible": torch.from_numpy(frames.target_visible.astype(np.float32)),
        "quality": torch.from_numpy(frames.quality.astype(np.float32)),
        "contact": torch.from_numpy(frames.contact.astype(np.float32)),
        "corr_mm": torch.from_numpy((frames.correction_mm / netmod.CORR_UNIT).astype(np.float32)),
        "corr_deg": torch.from_numpy((frames.correction_deg / netmod.CORR_UNIT).astype(np.float32)),
    }


def loss_fn(raw: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    contact = t["contact"]
    # Pose labels matter most where the target shows; far-off frames still teach the rough direction.
    pose_w = (0.3 + 0.7 * (t["visible"] > 0.05).float()) * contact * t["geometry"]
    depth_w = contact * t["geometry"]
    parts = {
        "gain": F.smooth_l1_loss(raw[:, netmod.RAW_GAIN], t["gain"], beta=0.2),
        "depth": 4.0 * F.smooth_l1_loss(raw[:, netmod.RAW_DEPTH] * depth_w, t["depth"] * depth_w, beta=0.05),
        "visible": F.binary_cross_entropy_with_logits(raw[:, netmod.RAW_VISIBLE], t["visible"]),
        "quality": F.binary_cross_entropy_with_logits(raw[:, netmod.RAW_QUALITY], t["quality"]),
        "contact": F.binary_cross_entropy_with_logits(raw[:, netmod.RAW_CONTACT], contact),
        "pose": (
            (
                F.smooth_l1_loss(raw[:, netmod.RAW_CORR_MM], t["corr_mm"], beta=0.3, reduction="none").sum(1)
                + F.smooth_l1_loss(
                    raw[:, netmod.RAW_CORR_DEG], t["corr_deg"], beta=0.3, reduction="none"
                ).sum(1)
            )
            * pose_w
        ).mean(),
    }
    total = sum(parts.values(), torch.zeros(()))
    return total, {k: float(v.detach()) for k, v in parts.items()}


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, p: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, gain label shifts in dB, geometry kept) for one batch."""
    out = images.astype(np.float32)
    delta = np.zeros(len(images), np.float32)
    geometry_kept = np.ones(len(images), bool)
    for i in range(len(images)):
        if rng.uniform() < p:
            out[i], delta[i], geometry_kept[i] = augment(images[i], rng)
    return out, delta, geometry_kept


def torch_version() -> str:
    """Recorded in the manifest: the same seed gives the same weights only on the same torch."""
    return str(torch.__version__)


def set_deterministic(seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)


def train(frames: Frames, params: TrainParams) -> netmod.SonoNet:
    set_deterministic(params.seed)
    rng = np.random.default_rng([params.seed, 0x7A1])
    # channels_last: oneDNN's convolutions run a few percent faster on CPU in this layout.
    model = netmod.SonoNet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = len(frames) // params.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=params.lr, total_steps=params.epochs * steps_per_epoch, pct_start=0.15
    )
    scalars_all = prepare_scalars(frames.depth_mm, frames.freq_mhz)
    for epoch in range(params.epochs):
        t0 = time.monotonic()
        order = rng.permutation(len(frames))
        model.train()
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * params.batch : (step + 1) * params.batch])
            batch = frames.subset(idx)
            imgs, delta, geometry_kept = augment_batch(batch.images, rng, params.augment_p)
            x = torch.from_numpy(prepare_images(imgs)).contiguous(memory_format=torch.channels_last)
            s = torch.from_numpy(scalars_all[idx])
            loss, parts = loss_fn(model(x, s), targets(batch, delta, geometry_kept))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        summary = " ".join(f"{k}={v / steps_per_epoch:.3f}" for k, v in sums.items())
        log.info("epoch %d/%d %.0fs %s", epoch + 1, params.epochs, time.monotonic() - t0, summary)
    model.eval()
    return model.to(memory_format=torch.contiguous_format)
