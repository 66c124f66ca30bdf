"""The multi-head CNN: a 1×128×128 B-mode frame plus the current depth and frequency → every head.

Why no current gain input: the gain error is a property of the image's brightness (log display), and
a gain input would let the net memorise this simulator's typical best gain, which does not carry over
to scanners whose gain dials are calibrated differently. Depth is an input because the best depth is
asked for in mm; frequency because attenuation (how fast echoes fade with depth) depends on it.

``SonoNet.forward`` returns raw training-scale outputs; :class:`Exported` wraps it with the unit
conversions, so the ONNX file's outputs are already in the manifest's units.
"""

from __future__ import annotations

import torch
from torch import nn

from models.inputs import CORR_UNIT, DEPTH_SCALE, FREQ_SCALE, GAIN_UNIT_DB, INPUT_SIZE, OUTPUT_NAMES

__all__ = [
    "CORR_UNIT",
    "DEPTH_SCALE",
    "FREQ_SCALE",
    "GAIN_UNIT_DB",
    "INPUT_SIZE",
    "OUTPUT_NAMES",
    "Exported",
    "SonoNet",
]


# Raw output columns.
RAW_GAIN, RAW_DEPTH, RAW_VISIBLE, RAW_QUALITY, RAW_CONTACT = range(5)
RAW_CORR_MM = slice(5, 8)
RAW_CORR_DEG = slice(8, 11)
N_RAW = 11


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SonoNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 24, 32, 64, 96), hidden: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for i, w in enumerate(widths):
            layers.append(_block(c, w, 2))  # 128 → 64 → 32 → 16 → 8 → 4
            # A second conv from 16×16 down only: at 32×32 it cost a third of the net's compute (and
            # of `make model`'s training time); the width goes to the coarse stages instead, which
            # cost little and carry the anatomy the out-of-plane signs are read from.
            if i >= 2:
                layers.append(_block(w, w, 1))
            c = w
        self.features = nn.Sequential(*layers)
        # Keep the 4×4 layout (no global pooling): where the target lies in the frame is the pose signal.
        self.fc = nn.Sequential(
            nn.Linear(c * 16 + 2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, N_RAW)

    def forward(self, image: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(self.features(image), 1)
        return self.head(self.fc(torch.cat([f, scalars], dim=1)))


class Exported(nn.Module):
    """Outputs in the manifest's units: dB, mm, probabilities, mm and degrees."""

    def __init__(self, net: SonoNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, scalars: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.net(image, scalars)
        depth_mm = scalars[:, 0:1] / DEPTH_SCALE
        return (
            raw[:, RAW_GAIN : RAW_GAIN + 1] * GAIN_UNIT_DB,
            depth_mm * torch.exp(raw[:, RAW_DEPTH : RAW_DEPTH + 1]),
            torch.sigmoid(raw[:, RAW_VISIBLE : RAW_VISIBLE + 1]),
            torch.sigmoid(raw[:, RAW_QUALITY : RAW_QUALITY + 1]),
            torch.sigmoid(raw[:, RAW_CONTACT : RAW_CONTACT + 1]),
            raw[:, RAW_CORR_MM] * CORR_UNIT,
            raw[:, RAW_CORR_DEG] * CORR_UNIT,
        )
