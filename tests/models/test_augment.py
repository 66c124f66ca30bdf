"""The training augmentations' contract (models/augment.py): what they may change, what they keep.

A gain shift moves grey levels and tells the label; the look changers keep the reference grey; a
screen grab keeps the field's brightness but not its geometry, and says so.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import augment
from sim.phantom import make_phantom
from sim.scanner import Scanner


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    ph = make_phantom("abdomen", 4242)
    return Scanner(ph, (128, 128)).render(ph.target_pose, ph.preset.default, frame_index=0).astype(np.float32)


def test_gain_shift_moves_grey_by_the_log_display_slope_and_keeps_black(frame: np.ndarray) -> None:
    out = augment.shift_gain(frame, 6.0)
    slope = 6.0 * 255.0 / augment.SIM_DYNAMIC_RANGE_DB
    mid = (frame > 0) & (frame < 255 - slope)
    assert np.allclose(out[mid], frame[mid] + slope, atol=1e-3)
    assert np.all(out[frame <= 0] == 0.0)


@pytest.mark.parametrize("look", [augment.grey_map, augment.dynamic_range])
def test_look_changers_keep_the_reference_grey(look) -> None:
    ramp = np.linspace(1.0, 255.0, 128 * 128, dtype=np.float32).reshape(128, 128)
    ramp[0, 0] = augment.MID_GREY
    for seed in range(5):
        out = look(ramp, np.random.default_rng(seed))
        assert out[0, 0] == pytest.approx(augment.MID_GREY, abs=1e-3)
        assert np.all(np.diff(out.ravel()[1:]) >= -1e-3)  # still a display curve: order kept


def test_screen_grab_puts_the_field_in_a_black_screen_with_its_brightness(frame: np.ndarray) -> None:
    flat = np.full_like(frame, 80.0)  # a field whose every pixel is known; the draws do not depend on it
    h, w = frame.shape
    for seed in range(8):
        marked = augment.screen_grab(flat, np.random.default_rng(seed))
        assert marked.shape == frame.shape and marked.dtype == np.float32
        box = np.abs(marked - 80.0) < 1e-3
        rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert box[r0:r1, c0:c1].all()
        # Shrunk into the screen, and all black around it but for an ECG trace's bright pixels.
        assert 0.5 * h <= r1 - r0 <= 0.93 * h and 0.5 * w <= c1 - c0 <= 0.96 * w
        outside = marked[~box]
        assert np.all((outside == 0.0) | (outside >= 150.0))
        # The real frame lands in the same box, area-averaged, not re-exposed: the field's
        # brightness (what the gain label is about) stays.
        field = augment.screen_grab(frame, np.random.default_rng(seed))[r0:r1, c0:c1]
        assert np.median(field[field > 0]) == pytest.approx(np.median(frame[frame > 0]), abs=6.0)


def test_augment_says_when_the_geometry_no_longer_matches_the_labels(frame, monkeypatch) -> None:
    rng = np.random.default_rng(3)
    monkeypatch.setattr(augment, "PIPELINE", ((augment.screen_grab, 1.0),))
    _, _, kept = augment.augment(frame.astype(np.uint8), rng, gain_shift_p=0.0)
    assert kept is False
    monkeypatch.setattr(augment, "PIPELINE", ((augment.blur, 1.0), (augment.burn_in, 1.0)))
    _, delta, kept = augment.augment(frame.astype(np.uint8), rng, gain_shift_p=0.0)
    assert kept is True and delta == 0.0
