"""The end-to-end clip experiment's windows are the shipped head's windows (same frames, motion and
truth), so its held-out figures compare with the head's. The torch part runs only where torch is."""

from __future__ import annotations

import numpy as np

from models.clip_data import generate
from models.clip_e2e import LAGS, clip_windows
from models.clip_head import FEATURE_OUTPUT, PAST_S, windows


def test_the_experiments_windows_are_the_shipped_heads_windows() -> None:
    seqs = generate(range(3000, 3002), 1)
    n, t = seqs.images.shape[:2]
    enc = {
        FEATURE_OUTPUT: np.arange(n * t, dtype=np.float32).reshape(n, t, 1),  # feature = frame number
        "correction_mm": np.zeros((n, t, 3), np.float32),
        "correction_deg": np.zeros((n, t, 3), np.float32),
    }
    shipped = windows(seqs, enc, past_s=PAST_S)
    ours = clip_windows(seqs, LAGS)
    np.testing.assert_allclose(ours.motion, shipped.motion, atol=1e-5)
    np.testing.assert_array_equal(ours.truth, shipped.truth)
    np.testing.assert_array_equal(ours.traj, shipped.group)
    # the frames a window gathers (now, now - lag ...) are those the head's features came from
    frame_numbers = ours.traj[:, None] * t + (ours.now[:, None] - np.array((0, *LAGS))[None])
    np.testing.assert_array_equal(frame_numbers, shipped.features[:, :, 0].astype(int))
    report_w = ours.select(ours.contact > 0.5).as_report_windows()
    assert len(report_w.truth) == int((ours.contact > 0.5).sum()) > 0
