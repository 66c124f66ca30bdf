"""The model on real scanner images (``tests/data/real_us/``, see SOURCES.md there): what it says
about three vendors' tissue frames and a probe held in the air, each as acquired and with the gain
shifted on the display. The build records this in the manifest and the model card states it, so the
card's claims about real images are measured by the build that made the model, not written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.augment import shift_gain
from models.evaluate import run_onnx_inputs
from models.imageprep import read_image, resize
from models.inputs import INPUT_SIZE
from sim.presets import PRESETS

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_us"
# image: (preset, imaging depth in mm from the file's pixel spacing × rows of the tissue region)
TISSUE = {
    "real_aloka_pelvis.png": ("abdomen", 150.0),
    "real_epiq_plax.png": ("cardiac", 160.0),
    "real_sonosite_a4c.png": ("cardiac", 190.0),
}
AIR = {"real_air_philips.png": ("vascular", 40.0)}
TISSUE_SHIFTS_DB = (-10.0, 0.0, 10.0)
AIR_SHIFTS_DB = (-10.0, -5.0, 0.0, 5.0, 10.0)


def gain_shifted(grey: np.ndarray, delta_db: float) -> np.ndarray:
    """The 8-bit frame as ``delta_db`` more gain would show it (see models.augment.shift_gain)."""
    return np.rint(shift_gain(grey.astype(np.float32), delta_db)).astype(np.uint8)


def _input_frames(grey: np.ndarray, shifts: tuple[float, ...]) -> np.ndarray:
    """(len(shifts), INPUT_SIZE, INPUT_SIZE) uint8: the frame gain-shifted, then resized."""
    return np.stack(
        [np.clip(np.rint(resize(gain_shifted(grey, d), INPUT_SIZE, INPUT_SIZE)), 0, 255) for d in shifts]
    ).astype(np.uint8)


def real_image_checks(model_path: Path, data: Path = DATA) -> dict[str, Any]:
    """Per image and display gain shift (dB): contact probability and, on tissue, the gain error."""
    out: dict[str, Any] = {"tissue": {}, "air": {}}
    for group, catalogue, shifts in (("tissue", TISSUE, TISSUE_SHIFTS_DB), ("air", AIR, AIR_SHIFTS_DB)):
        for name, (preset, depth) in catalogue.items():
            n = len(shifts)
            pred = run_onnx_inputs(
                model_path,
                _input_frames(read_image(data / name), shifts),
                np.full(n, depth, np.float32),
                np.full(n, PRESETS[preset].default.freq_mhz, np.float32),
            )
            row: dict[str, Any] = {"preset": preset, "depth_mm": depth, "shifts_db": list(shifts)}
            row["contact_probability"] = [round(float(p), 3) for p in pred["contact"]]
            if group == "tissue":
                row["gain_error_db"] = [round(float(g), 1) for g in pred["gain_error_db"]]
            out[group][name] = row
    return out
