"""A clip network trained end to end from scratch (issue 17's open question, run where a GPU is lent).

The shipped clip head (``models.clip_head``) reads frozen per-frame features of the frame model 1.4.0;
trained on more phantoms or fine-tuned with the convolutions, its held-out sweep sign (dy) stayed at
69-71%. This asks whether convolutions trained from scratch on clips see more of the sweep. Two ways
of fusing the clip are compared on the same trajectories (``models.clip_data``, training phantoms 3000+,
held-out 110000+, the shipped head's own sets):

- ``late``: one encoder per frame, then the current frame's features, each earlier frame's
  difference from them and the tracked motion through an MLP (the shipped head's layout, so per-frame
  features can be reused across overlapping windows on the device);
- ``early``: the frames stacked as channels of one encoder, so the first convolution sees how the
  speckle and the anatomy moved between frames, with the motion joined before the MLP.

Both give 6 means and 6 log standard deviations (β-NLL, as the shipped head) plus visibility and
quality (auxiliary). Scored with ``clip_head.report`` and calibrated with ``clip_head.sd_scale`` on the
last tenth of the training trajectories. An experiment, not a model build: it writes a report and the
weights, not a model folder.

    python -m models.clip_e2e --out /tmp/e2e --workers 16 --budget-s 150   # on a GPU machine
    python -m models.clip_e2e --out /tmp/e2e --smoke                       # minutes on a CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.clip_data import FPS, Sequences, generate
from models.clip_head import (
    HELD_OUT_FROM,
    PAST_S,
    TOL,
    TRAIN_FROM,
    Windows,
    beta_nll,
    window_lags,
    window_motion,
)
from models.clip_head import report as clip_report
from models.clip_head import sd_scale as fit_sd_scale
from models.inputs import DEPTH_SCALE, FREQ_SCALE, IMAGE_MEAN, IMAGE_STD

log = logging.getLogger(__name__)

WARMUP_STEPS = 300
LAGS = tuple(window_lags(PAST_S, FPS))  # frames before the current one: 3, 6, 10


@dataclass
class ClipWindows:
    """Every window of every trajectory, by index: frames are gathered from the images at batch time."""

    traj: np.ndarray  # (M,)
    now: np.ndarray  # (M,)
    motion: np.ndarray  # (M, K-1, 7) as clip_head.windows: relative pose / MOTION_UNIT, tracked flag
    truth: np.ndarray  # (M, 6)
    visible: np.ndarray  # (M,)
    quality: np.ndarray  # (M,)
    contact: np.ndarray  # (M,)

    def select(self, sel: np.ndarray) -> ClipWindows:
        return ClipWindows(*(getattr(self, k)[sel] for k in ClipWindows.__dataclass_fields__))

    def as_report_windows(self) -> Windows:
        """What ``clip_head.report`` reads (it needs no features)."""
        m = len(self.truth)
        empty = np.zeros((m, 1, 1), np.float32)
        return Windows(
            empty, self.motion, self.truth, self.visible, self.contact, np.zeros((m, 6)), self.traj
        )


def clip_windows(seqs: Sequences, lags: tuple[int, ...] = LAGS) -> ClipWindows:
    n, t = seqs.images.shape[:2]
    grid_traj, grid_now = np.meshgrid(np.arange(n), np.arange(max(lags), t), indexing="ij")
    traj, now = grid_traj.ravel(), grid_now.ravel()
    motion = np.stack([window_motion(seqs, int(i), int(j), lags) for i, j in zip(traj, now, strict=True)])
    return ClipWindows(
        traj, now, motion, seqs.correction[traj, now].astype(np.float32),
        seqs.visible[traj, now].astype(np.float32), seqs.quality[traj, now].astype(np.float32),
        seqs.contact[traj, now].astype(np.float32),
    )  # fmt: skip


def _net(fusion: str, k: int, widths: tuple[int, ...] = (24, 32, 48, 96, 128), proj: int = 64,
         width: int = 256, dropout: float = 0.2) -> Any:  # fmt: skip
    import torch
    from torch import nn

    def encoder(c_in: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        c = c_in
        for i, w in enumerate(widths):  # 128 → 4, as models.net.SonoNet (no pooling: position matters)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i >= 2:
                layers += [nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        return nn.Sequential(*layers, nn.Flatten())

    d = widths[-1] * 16
    n_motion = 7 * (k - 1)

    class ClipNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder(1 if fusion == "late" else k)
            self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, proj), nn.ReLU())
            n_in = (proj * k if fusion == "late" else proj) + n_motion + 2
            self.mlp = nn.Sequential(
                nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 14),
            )  # fmt: skip

        def forward(self, frames: torch.Tensor, motion: torch.Tensor, scalars: torch.Tensor) -> Any:
            b = frames.shape[0]
            if fusion == "late":
                p = self.proj(self.encoder(frames.reshape(b * k, 1, *frames.shape[2:]))).reshape(b, k, -1)
                x = torch.cat([p[:, 0], (p[:, 1:] - p[:, :1]).flatten(1)], dim=1)
            else:
                x = self.proj(self.encoder(frames))
            out = self.mlp(torch.cat([x, motion.flatten(1), scalars], dim=1)).float()
            return out[:, :6], out[:, 6:12].clamp(-4.0, 4.0), out[:, 12:]

    return ClipNet()


@dataclass(frozen=True)
class E2EParams:
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    untracked_p: float = 0.5  # as clip_head.HeadParams
    repeat_p: float = 0.05
    aux_weight: float = 0.3
    seed: int = 1


class Batches:
    """Windows' frames gathered on the device from the trajectories' images (uint8, kept there)."""

    def __init__(self, seqs: Sequences, w: ClipWindows, device: str, lags: tuple[int, ...] = LAGS) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.images = torch.from_numpy(seqs.images).to(device)
        self.offsets = torch.tensor((0, *lags), device=device)
        scalars = np.stack([seqs.depth_mm * DEPTH_SCALE, seqs.freq_mhz * FREQ_SCALE], 1).astype(np.float32)
        self.scalars = torch.from_numpy(scalars).to(device)
        self.traj = torch.from_numpy(w.traj).to(device)
        self.now = torch.from_numpy(w.now).to(device)
        self.motion = torch.from_numpy(w.motion).to(device)
        self.truth = torch.from_numpy(w.truth / TOL.astype(np.float32)).to(device)
        self.aux = torch.from_numpy(np.stack([w.visible, w.quality], 1)).to(device)

    def get(self, idx: Any, gen: Any = None, params: E2EParams | None = None) -> tuple[Any, ...]:
        """Frames normalised as the frame model's input; with ``params`` (training) the scanner's look
        varied per window (contrast, grey map, noise) and the camera's motion dropped as at inference."""
        torch = self.torch
        t, n = self.traj[idx], self.now[idx]
        frames = self.images[t[:, None], n[:, None] - self.offsets[None]].float() / 255.0  # (B, K, H, W)
        motion = self.motion[idx].clone()
        if params is not None:
            b = len(idx)
            u = torch.rand((b, 5), device=self.device, generator=gen)
            gamma = torch.exp((u[:, 0] - 0.5) * 0.5)[:, None, None, None]
            contrast = (0.8 + 0.4 * u[:, 1])[:, None, None, None]
            frames = (frames.clamp_min(1e-4) ** gamma * contrast).clamp(0, 1)
            frames = frames + 0.02 * u[:, 2, None, None, None] * torch.randn(
                frames.shape, device=self.device, generator=gen
            )
            lost = u[:, 3] < params.untracked_p
            motion[lost] = 0.0
            still = u[:, 4] < params.repeat_p
            frames[still] = frames[still, :1].expand(-1, frames.shape[1], -1, -1)
            motion[still] = 0.0
        frames = (frames - IMAGE_MEAN) / IMAGE_STD
        return frames.contiguous(memory_format=torch.channels_last), motion, self.scalars[t]


def train(net: Any, data: Batches, rows: np.ndarray, params: E2EParams, budget_s: float,
          max_steps: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train for about ``budget_s`` seconds: the step count is set from the speed of steps 20-120 so
    the learning-rate schedule runs to its end."""
    torch = data.torch
    torch.manual_seed(params.seed)
    gen = torch.Generator(device=data.device).manual_seed(params.seed)
    net.to(data.device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    rows_t = torch.from_numpy(rows).to(data.device)
    cuda = data.device.startswith("cuda")
    # Timed from step 20 to 120: the first steps include cuDNN's algorithm search.
    probe_from, probe_steps, total, step, t0 = 20, 120, None, 0, time.monotonic()
    t_probe = t0
    losses: list[float] = []
    while total is None or step < total:
        if step in (probe_from, probe_steps) and total is None and cuda:
            torch.cuda.synchronize()
        if step == probe_from:
            t_probe = time.monotonic()
        if step == probe_steps and total is None:
            per_step = (time.monotonic() - t_probe) / (probe_steps - probe_from)
            budget_s -= time.monotonic() - t0
            total = probe_steps + max(1, int(budget_s / per_step))
            if max_steps:
                total = min(total, max_steps)
            log.info(
                "%.1f ms a step: %d steps (%.1f epochs)",
                per_step * 1e3,
                total,
                total * params.batch / len(rows),
            )
        frac = step / total if total else 0.0
        lr = params.lr * min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rows_t[torch.randint(len(rows), (params.batch,), device=data.device, generator=gen)]
        frames, motion, scalars = data.get(idx, gen, params)
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            mean, log_sd, aux = net(frames, motion, scalars)
        loss = beta_nll(
            data.truth[idx], mean, log_sd
        ) + params.aux_weight * torch.nn.functional.binary_cross_entropy_with_logits(aux, data.aux[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:  # reading the loss waits for the GPU: not every step
            losses.append(float(loss.detach()))
        if step % 500 == 0:
            log.info("step %d loss %.4f lr %.2e", step, losses[-1], lr)
        step += 1
    return {"steps": step, "train_s": round(time.monotonic() - t0, 1), "final_loss": round(losses[-1], 4)}


def predict(
    net: Any, data: Batches, rows: np.ndarray, mode: str, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Means and sds (mm, deg) for ``rows``: ``tracked``, ``untracked`` (motion masked) or ``still``
    (the current frame repeated, no motion)."""
    torch = data.torch
    net.eval()
    means, sds = [], []
    with torch.no_grad():
        for b in range(0, len(rows), batch):
            idx = torch.from_numpy(rows[b : b + batch]).to(data.device)
            frames, motion, scalars = data.get(idx)
            if mode != "tracked":
                motion = torch.zeros_like(motion)
            if mode == "still":
                frames = (
                    frames[:, :1]
                    .expand(-1, frames.shape[1], -1, -1)
                    .contiguous(memory_format=torch.channels_last)
                )
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=data.device.startswith("cuda")):
                mean, log_sd, _ = net(frames, motion, scalars)
            means.append(mean.float().cpu().numpy())
            sds.append(np.exp(log_sd.float().cpu().numpy()))
    return np.concatenate(means) * TOL, np.concatenate(sds) * TOL


def evaluate(net: Any, train_data: Batches, cal_rows: np.ndarray, cal_w: ClipWindows,
             held_data: Batches, held_w: ClipWindows) -> dict[str, Any]:  # fmt: skip
    held_rows = np.arange(len(held_w.truth))
    means, sds = zip(*(predict(net, train_data, cal_rows, m) for m in ("tracked", "untracked")), strict=True)
    scale = fit_sd_scale(np.concatenate(means), np.concatenate(sds), np.concatenate([cal_w.truth] * 2))
    out: dict[str, Any] = {"sd_scale": [round(float(v), 3) for v in scale]}
    for mode in ("tracked", "untracked", "still"):
        mean, sd = predict(net, held_data, held_rows, mode)
        out[mode] = clip_report(mean, sd * scale, held_w.as_report_windows())
    return out


def render(seeds: range, workers: int, deadline: float | None = None, chunk: int = 300) -> Sequences:
    """Two trajectories per phantom, in chunks, stopping at ``deadline`` (monotonic) if given."""
    parts: list[Sequences] = []
    for s in range(seeds.start, seeds.stop, chunk):
        if deadline is not None and parts and time.monotonic() > deadline:
            log.info("render: time is up after %d phantoms", s - seeds.start)
            break
        parts.append(generate(range(s, min(s + chunk, seeds.stop)), 2, workers=workers))
    return Sequences.concat(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-phantoms", type=int, default=2700)
    p.add_argument("--eval-phantoms", type=int, default=240)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--render-s", type=float, default=240.0, help="stop rendering training phantoms after this"
    )
    p.add_argument("--budget-s", type=float, default=150.0, help="training time per fusion")
    p.add_argument("--fusion", default="late,early")
    p.add_argument("--smoke", action="store_true", help="a few phantoms and steps: checks the code runs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    if args.smoke:
        args.train_phantoms, args.eval_phantoms, args.budget_s = 12, 6, 5.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    held = render(range(HELD_OUT_FROM, HELD_OUT_FROM + args.eval_phantoms), args.workers)
    train_seqs = render(range(TRAIN_FROM, TRAIN_FROM + args.train_phantoms), args.workers,
                        deadline=t0 + args.render_s)  # fmt: skip
    w_train, w_held = clip_windows(train_seqs), clip_windows(held)
    log.info("data %.0f s: %d / %d trajectories", time.monotonic() - t0, len(train_seqs), len(held))
    cut = int(0.9 * len(train_seqs))  # the last tenth calibrates the spread, never trained on
    contact = w_train.contact > 0.5
    fit_rows = np.flatnonzero(contact & (w_train.traj < cut))
    cal_rows = np.flatnonzero(contact & (w_train.traj >= cut))
    train_data, held_data = Batches(train_seqs, w_train, device), Batches(held, w_held, device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "train_trajectories": len(train_seqs), "held_out_trajectories": len(held),
        "fit_windows": len(fit_rows), "data_s": round(time.monotonic() - t0, 1),
    }  # fmt: skip
    k = len(LAGS) + 1
    for fusion in args.fusion.split(","):
        net = _net(fusion, k)
        results[fusion] = train(net, train_data, fit_rows, E2EParams(), args.budget_s,
                                max_steps=130 if args.smoke else None)  # fmt: skip
        results[fusion].update(
            evaluate(net, train_data, cal_rows, w_train.select(cal_rows), held_data, w_held)
        )
        results[fusion]["params"] = sum(int(p.numel()) for p in net.parameters())
        torch.save(net.state_dict(), args.out / f"clip_e2e_{fusion}.pt")
        (args.out / "e2e_report.json").write_text(json.dumps(results, indent=1))
        log.info("%s: %s", fusion, json.dumps(results[fusion]["tracked"]))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
