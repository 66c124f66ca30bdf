"""Closed-loop clip-head windows: what a real episode on a training phantom records, and the seed rule."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from service.tools.evaluate.loop_windows import CLOSED_LOOP_SEED_MIN, FIELDS, parse_seeds, record, save


@pytest.mark.timeout(300)
def test_a_camera_episode_records_the_heads_inputs_with_the_truth(tmp_path: Path) -> None:
    data = record(5000, "camera", limit_s=4.0, every=1)
    n = len(data["truth"])
    assert n >= 30  # 4 s at 10 fps, plus the hold and the capture follow-on
    assert {k: len(v) for k, v in data.items()} == dict.fromkeys(FIELDS, n)
    k, d = data["features"].shape[1:]
    assert data["motion"].shape == (n, k - 1, 7) and d > 0
    assert data["features"].dtype == np.float16
    # the camera tracks the probe: most windows carry tracked motion between their frames
    assert data["motion"][:, :, 6].mean() > 0.5
    # the truth is the simulator's: the eval starts 30-80 mm / 20-60 degrees from the view
    first = data["truth"][0]
    assert np.linalg.norm(first[:3]) + np.linalg.norm(first[3:]) >= 20.0
    assert set(np.unique(data["group"])) == {5000}
    out = tmp_path / "w.npz"
    save(data, out)
    with np.load(out) as back:
        assert np.array_equal(back["truth"], data["truth"])
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_every_nth_frame_is_kept() -> None:
    every = record(5001, "guided", limit_s=3.0, every=1)
    half = record(5001, "guided", limit_s=3.0, every=2)
    assert len(half["truth"]) == (len(every["truth"]) + 1) // 2
    assert np.array_equal(half["truth"], every["truth"][::2])
    assert every["motion"][:, :, 6].max() == 0.0  # no camera: the motion is unknown


def test_closed_loop_seeds_never_become_training_data() -> None:
    with pytest.raises(ValueError, match="closed-loop range"):
        record(CLOSED_LOOP_SEED_MIN, "camera", limit_s=1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="below"):
        parse_seeds(f"{CLOSED_LOOP_SEED_MIN - 5}:{CLOSED_LOOP_SEED_MIN + 5}")
    with pytest.raises(argparse.ArgumentTypeError, match="FIRST:END"):
        parse_seeds("5000-5100")
    assert parse_seeds("5000:5003") == range(5000, 5003)
