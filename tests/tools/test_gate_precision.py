"""The gate-precision diagnostic: its table from known frames, and its recorder on a real episode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.tools.evaluate.gate_precision import (
    GateFrame,
    gate_table,
    probing_at_plane,
    record_episode,
    sign_by_band,
)


def frame(distance: float, angle: float, estimate: float, quality: float, model: float = 0.0,
          probing: bool = False) -> GateFrame:  # fmt: skip
    est = np.full(6, estimate)
    shown = est + (10.0 if probing else 0.0)
    return GateFrame(
        distance, angle, est, np.full(6, 3.0), shown, quality, 0.5, np.full(6, model), np.ones(6)
    )


def test_the_table_counts_each_gate_against_the_truth() -> None:
    frames = [
        frame(2.0, 3.0, 1.0, 0.6),  # at the plane, belief there, image agrees
        frame(3.0, 2.0, 1.0, 0.4, probing=True),  # at the plane, the image does not agree
        # far, yet belief and image say "here"; the frame's own correction does not
        frame(20.0, 3.0, 1.0, 0.6, model=6.0),
        frame(6.0, 9.0, 1.0, 0.6),  # neither at the plane nor far
        frame(30.0, 20.0, 9.0, 0.6),  # far, the belief knows
    ]
    rows = {r["gate"]: r for r in gate_table(frames)}
    there = rows["belief within tolerance"]
    assert (
        there["frames"] == 4
        and there["at_plane"] == pytest.approx(0.5)
        and there["far"] == pytest.approx(0.25)
    )
    assert there["recall"] == 1.0
    shipped = rows["+ image agrees (shipped)"]
    assert shipped["frames"] == 3 and shipped["at_plane"] == pytest.approx(1 / 3) and shipped["recall"] == 0.5
    own = rows["+ frame's correction within tolerance"]
    assert own["frames"] == 2 and own["far"] == 0.0  # the far frame's own correction (6) is out
    assert rows["+ frame's correction within 1.5 sd"]["frames"] == 2
    assert probing_at_plane(frames) == (1, 2)


def test_a_gate_no_frame_passes_says_so_instead_of_a_share() -> None:
    rows = {r["gate"]: r for r in gate_table([frame(30.0, 20.0, 9.0, 0.6)])}
    assert rows["belief within tolerance"]["frames"] == 0
    assert math.isnan(rows["belief within tolerance"]["at_plane"])
    assert math.isnan(rows["belief within tolerance"]["recall"])  # no frame at the plane either


def test_signs_are_scored_per_band_of_the_true_correction_and_per_axis() -> None:
    def at(truth: float, own: float, belief: float) -> GateFrame:
        t = np.zeros(6)
        t[1] = truth  # the sweep (dy) only; the other axes' truths are 0, in no band
        base = frame(10.0, 5.0, 0.0, 0.5)
        est, model = np.zeros(6), np.zeros(6)
        est[1], model[1] = belief, own
        return GateFrame(10.0, 5.0, est, base.spread, est, 0.5, 0.5, model, None, t)

    near = [at(5.0, 1.0, -1.0)] * 3 + [at(-6.0, 2.0, -2.0)]  # own right 3 of 4, belief right 1 of 4
    far = [at(20.0, -1.0, 3.0)] * 2  # own wrong, belief right
    rows = {r["band"]: r for r in sign_by_band(near + far, min_frames=2)}
    assert rows[(4.0, 8.0)]["dy"] == (0.75, 0.25, 4)
    assert rows[(15.0, 30.0)]["dy"] == (0.0, 1.0, 2)
    assert rows[(8.0, 15.0)]["dy"] is None and rows[(4.0, 8.0)]["dx"] is None  # no frame there
    assert sign_by_band(far, min_frames=3)[2]["dy"] is None  # too few to score


@pytest.mark.timeout(300)
def test_the_recorder_follows_a_real_camera_episode() -> None:
    """Six simulated seconds of a default-seed episode: every tracked frame recorded with the truth."""
    frames = record_episode(200000, 0.3, limit_s=6.0)
    assert 40 <= len(frames) <= 60 + 50 + 30  # the loop, the hold and the capture follow-on, once tracked
    assert all(f.distance_mm >= 0.0 and f.angle_deg >= 0.0 for f in frames)
    assert frames[0].distance_mm >= 30.0  # the eval starts 30-80 mm from the view
    assert all(f.model_sd is not None and np.all(f.model_sd > 0) for f in frames)  # the clip head's spread
    assert len({round(f.distance_mm, 3) for f in frames}) > 10  # the probe moved under guidance
    # The truth's correction is the motion to the view: as long as the distance to it.
    assert all(
        f.truth is not None and abs(np.linalg.norm(f.truth[:3]) - f.distance_mm) < 1e-6 for f in frames
    )
