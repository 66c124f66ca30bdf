"""The heuristic placeholder model (the model seam itself, :class:`Model`, is in :mod:`service.seams`).

The real model (INT8 ONNX, ``service/daemon/onnx_model.py``) implements :class:`Model`; until it lands the
pipeline runs :class:`HeuristicModel`, which judges gain and contact from image statistics only and
claims no knowledge of the probe pose (zero correction, zero confidence).
"""

from __future__ import annotations

import numpy as np

from service.seams import ModelOutput

# How deep a probe's lens ring-down shows in air at usual gains (sim.physics.ring_down: bands every
# 2 mm, 12 dB weaker each; the first three or four stay above black).
RING_DOWN_MM = 8.0


class HeuristicModel:
    """Placeholder model from image statistics, used until the ONNX model lands.

    B-mode brightness is log-compressed: over the display's dynamic range, one dB of gain moves the
    grey level by about ``255 / dynamic_range_db``. The gain error is the distance of the tissue's
    median grey level from a mid-grey target, in those dB. Contact is the share of the imaged near field
    (non-zero pixels: outside a sector is exactly 0) that carries echo. Depth: if echo reaches the
    bottom of the image, the structure continues deeper than the view; otherwise the view should end
    a little below where echo stops.
    """

    name = "heuristic"
    version = "0"
    provider = "numpy"

    def __init__(
        self,
        # The median of the pixels above the noise floor at the best gain: the speckle's dark tail
        # below the floor is left out, which puts it above sim.truth.TARGET_GREY (40).
        target_level: float = 50.0,
        dynamic_range_db: float = 60.0,
        noise_floor: int = 12,
        fill_fraction: float = 0.85,
    ) -> None:
        self.target_level = target_level
        self.db_per_level = dynamic_range_db / 255.0
        self.noise_floor = noise_floor
        self.fill_fraction = fill_fraction
        self.warmed_up = False

    def warmup(self) -> None:
        self.predict(np.zeros((64, 64), np.uint8), 0.0, 100.0, 3.5)
        self.warmed_up = True

    def predict(self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float) -> ModelOutput:
        if image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"expected a non-empty uint8 (H, W) image, got {image.dtype} {image.shape}")
        rows = image.shape[0]
        echo = image > self.noise_floor
        # Contact: how much of the imaged near field carries echo. Pixels that are exactly 0 lie outside
        # the scan (a sector's corners, which grow with depth), not in it, so they do not count.
        # A probe in air still shows the lens ring-down in the first few mm, so the near field starts
        # below it.
        top = min(rows - 1, int(rows * RING_DOWN_MM / depth_mm))
        near = image[top : top + max(1, rows // 4)]
        imaged = int(np.count_nonzero(near))
        share = (
            float(np.count_nonzero(near > self.noise_floor)) / imaged if imaged >= 0.02 * near.size else 0.0
        )
        contact = float(np.clip((share - 0.1) / 0.7, 0.0, 1.0))
        tissue = image[echo]
        if tissue.size < 0.02 * image.size:  # nothing but noise: probe in air, nothing to judge
            return ModelOutput(0.0, float(depth_mm), 0.0, 0.0, contact)
        # Median of the tissue, not the mean: bright specular lines should not decide the gain.
        level = float(np.median(tissue))
        gain_error = (level - self.target_level) * self.db_per_level
        # Saturation hides how far too bright we are; a clipped image is at least this far off.
        if (image >= 250).mean() > 0.3:
            gain_error = max(gain_error, 10.0)
        row_echo = echo.mean(axis=1) > 0.1
        deepest = int(np.nonzero(row_echo)[0].max()) + 1 if row_echo.any() else rows
        if deepest >= rows - max(1, rows // 20):
            best_depth = depth_mm * 1.3  # echo to the bottom edge: the structure goes on below
        else:
            best_depth = depth_mm * (deepest / rows) / self.fill_fraction
        # View quality needs the target, which this model cannot see: good contact and gain make at
        # most half a good view, so the placeholder never says "hold still" or captures by itself.
        quality = 0.5 * contact * float(np.clip(1.0 - abs(gain_error) / 20.0, 0.0, 1.0))
        return ModelOutput(
            gain_error_db=float(gain_error),
            best_depth_mm=float(best_depth),
            target_visible=0.0,
            quality=quality,
            contact=contact,
        )
