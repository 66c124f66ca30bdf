"""The model's input and output conventions, torch-free (evaluation, manifest and tests use them
without the training extra). ``models.net`` builds the network on these."""

from __future__ import annotations

import numpy as np

INPUT_SIZE = 128
IMAGE_MEAN = 0.2  # normalised = (grey / 255 - IMAGE_MEAN) / IMAGE_STD
IMAGE_STD = 0.25
DEPTH_SCALE = 0.01  # depth input = depth_mm * DEPTH_SCALE
FREQ_SCALE = 0.1  # frequency input = freq_mhz * FREQ_SCALE
GAIN_UNIT_DB = 5.0  # raw gain output × this = dB
CORR_UNIT = 10.0  # raw correction outputs × this = mm / degrees

OUTPUT_NAMES = (
    "gain_error_db",
    "best_depth_mm",
    "target_visible",
    "quality",
    "contact",
    "correction_mm",
    "correction_deg",
)


def prepare_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey 0..255 → (N, 1, H, W) float32 normalised as the manifest says."""
    x = images.astype(np.float32) / 255.0
    return ((x - IMAGE_MEAN) / IMAGE_STD)[:, None]


def prepare_scalars(depth_mm: np.ndarray, freq_mhz: np.ndarray) -> np.ndarray:
    return np.stack([depth_mm * DEPTH_SCALE, freq_mhz * FREQ_SCALE], axis=1).astype(np.float32)
