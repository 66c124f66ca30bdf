"""`sonoguide analyze` on real scanner images (tests/data/real_us/, see SOURCES.md there): three
vendors' B-mode frames and one probe held in the air, none of them ever seen in training.

A gain change on a log-compressed display shifts every echo by G·255/DR grey levels; the black
outside the scan (exact 0) stays black. The same frame darkened by 10 dB must be told to raise the
gain, brightened by 10 dB to lower it, and the probe in the air must read as no contact.
The reference grey the gain is judged against (sim.truth.TARGET_GREY) was set from these three
tissue images, so what is tested independently here is the *response*: 10 dB either way must flip
the advice to the right side of the controller's 2 dB dead band.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.real_images import AIR, DATA, TISSUE, gain_shifted
from tests.cli import run_sonoguide

SHIFT_DB = 10.0


def _analyze(paths: list[Path], preset: str, depth_mm: float) -> list[dict[str, object]]:
    proc = run_sonoguide(
        "analyze", *map(str, paths), "--preset", preset, "--depth-mm", str(depth_mm), "--json", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _shifted_copies(name: str, shifts: tuple[float, ...], folder: Path) -> list[Path]:
    grey = np.asarray(Image.open(DATA / name).convert("L")).astype(np.float64)
    paths = []
    for delta in shifts:
        path = folder / f"{delta:+g}dB_{name}"
        Image.fromarray(gain_shifted(grey, delta)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tissue_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict[str, object]]]:
    """Per tissue image, analyze's row for the frame as acquired, darker and brighter."""
    folder = tmp_path_factory.mktemp("real")
    out = {}
    for name, (preset, depth) in TISSUE.items():
        paths = [DATA / name, *_shifted_copies(name, (-SHIFT_DB, SHIFT_DB), folder)]
        out[name] = dict(zip(("original", "darker", "brighter"), _analyze(paths, preset, depth), strict=True))
    return out


@pytest.mark.parametrize("name", sorted(TISSUE))
def test_real_frame_darkened_asks_for_more_gain(name: str, tissue_rows) -> None:
    rows = tissue_rows[name]
    assert all(r["contact"] is True for r in rows.values()), rows
    assert rows["darker"]["gain_change_db"] > 0, rows["darker"]
    # And the answers are about the gain, not noise: 20 dB apart in the images, well apart in advice.
    assert float(rows["darker"]["gain_change_db"]) - float(rows["brighter"]["gain_change_db"]) >= 8.0


@pytest.mark.parametrize("name", sorted(TISSUE))
def test_real_frame_brightened_asks_for_less_gain(name: str, tissue_rows) -> None:
    assert tissue_rows[name]["brighter"]["gain_change_db"] < 0, tissue_rows[name]["brighter"]


AIR_SHIFTS_DB = (-10.0, -5.0, 5.0, 10.0)


@pytest.mark.parametrize("name", sorted(AIR))
def test_real_probe_in_air_is_no_contact(name: str, tmp_path: Path) -> None:
    """As acquired and with the display gain 5 and 10 dB lower and higher (higher lifts this
    scanner's depth-gained receiver noise toward tissue grey)."""
    preset, depth = AIR[name]
    paths = [DATA / name, *_shifted_copies(name, AIR_SHIFTS_DB, tmp_path)]
    for result in _analyze(paths, preset, depth):
        assert result["contact"] is False, result
        assert result["gain_change_db"] == 0.0 and result["gain_reason"] == "no skin contact"
