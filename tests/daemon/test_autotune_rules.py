"""The auto-tuning rules (service.policy.autotune) at their edges, one each: the probe's limits, the
gain controller's dead band, coarse band, smoothing and settle time, the depth controller's
hysteresis, dwell, interval and window, the manual pause and the manual-change detector.

Values are exact in binary where a rule compares with ``<`` or ``<=``, so each edge is tested exactly.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.policy.autotune import (
    AutoDepth,
    AutoGain,
    Change,
    DepthParams,
    GainParams,
    ManualChangeDetector,
    ManualOverride,
    ProbeLimits,
    depth_step_for,
)

LIMITS = ProbeLimits(depth_steps_mm=(40.0, 60.0, 80.0, 100.0), freqs_mhz=(2.5, 3.5, 5.0))


def test_probe_limits_refuse_what_no_probe_offers_naming_it() -> None:
    with pytest.raises(ValueError, match=r"bad gain range 10.0..10.0 step 1.0"):
        ProbeLimits(gain_min_db=10.0, gain_max_db=10.0)
    with pytest.raises(ValueError, match="bad gain range"):
        ProbeLimits(gain_step_db=0.0)
    with pytest.raises(ValueError, match="bad gain range"):
        ProbeLimits(gain_min_db=20.0, gain_max_db=10.0, gain_step_db=1.0)
    assert ProbeLimits(gain_step_db=0.5).quantize_gain(10.3) == 10.5  # a fine step is fine
    for steps in ((), (60.0, 40.0), (40.0, 40.0)):
        with pytest.raises(ValueError, match=r"depth steps must be increasing and non-empty, got"):
            ProbeLimits(depth_steps_mm=steps)
    with pytest.raises(ValueError, match=r"^the probe must offer at least one frequency$"):
        ProbeLimits(freqs_mhz=())


def test_nearest_depth_and_frequency_prefer_the_lower_on_a_tie() -> None:
    assert LIMITS.nearest_depth(71.0) == 80.0 and LIMITS.nearest_depth(70.0) == 60.0
    assert LIMITS.nearest_depth(500.0) == 100.0 and LIMITS.nearest_depth(-5.0) == 40.0
    assert (
        LIMITS.nearest_freq(3.0) == 2.5
        and LIMITS.nearest_freq(4.4) == 5.0
        and LIMITS.nearest_freq(3.4) == 3.5
    )
    assert AutoDepth(LIMITS).recommend(79.0) == 80.0


def gain(**kw) -> AutoGain:  # type: ignore[no-untyped-def]
    return AutoGain(ProbeLimits(), GainParams(**kw))


def test_the_dead_band_is_below_its_edge_and_the_coarse_band_beyond_its_edge() -> None:
    g = gain(smoothing=1.0, fine_frames=1, settle_s=0.0)
    assert g.update(1.5, 30.0, 0.0) is None  # inside the dead band
    change = g.update(2.0, 30.0, 1.0)  # exactly at its edge: acts, a fine step
    assert change == Change("gain_db", 30.0, 28.0, "image too bright by 2.0 dB")
    g = gain(smoothing=1.0, fine_frames=1, settle_s=0.0, coarse_frames=1)
    assert g.update(6.0, 30.0, 0.0).new == 27.0  # exactly 6 dB: still fine, at most 3 dB
    assert g.update(-6.5, 30.0, 1.0) == Change("gain_db", 30.0, 36.5 - 0.5, "image too dark by 6.5 dB")


def test_a_coarse_step_needs_both_this_frame_and_the_smoothed_error_beyond_the_band() -> None:
    g = gain(smoothing=0.5, fine_frames=2, settle_s=0.0)
    assert g.update(4.0, 30.0, 0.0) is None  # one frame: fine steps wait for two
    # this frame says 12 dB, but the running estimate is 0.5·12 + 0.5·4 = 8: coarse by both, all 12 dB
    assert g.update(12.0, 30.0, 1.0).new == 18.0
    g = gain(smoothing=0.5, fine_frames=2, settle_s=0.0)
    assert g.update(-10.0, 30.0, 0.0) is None  # a single coarse frame is not enough ...
    assert g.update(-10.0, 30.0, 0.1).new == 40.0  # ... two in a row are
    g = gain(smoothing=0.5, fine_frames=2, settle_s=0.0)
    assert g.update(0.0, 30.0, 0.0) is None
    # this frame 10 dB, estimate 5 dB: not coarse (the estimate is inside the band): a fine step of 3
    assert g.update(10.0, 30.0, 1.0) == Change("gain_db", 30.0, 27.0, "image too bright by 5.0 dB")


def test_one_wild_frame_moves_nothing_and_a_coarse_step_is_bounded() -> None:
    """Seen in the closed loop: one frame read +33 dB, the whole step made the image black, and the
    model then saw no skin (so auto gain never acted again). Two frames, and at most 18 dB at once."""
    g = gain(smoothing=0.5, fine_frames=2, settle_s=0.0)
    assert g.update(33.0, 50.0, 0.0) is None
    # The next frame disagrees (this frame 0, the estimate 16.5): a fine step at most, not 33 dB.
    assert g.update(0.0, 50.0, 0.1).new == 47.0
    g = gain(smoothing=0.5, fine_frames=2, settle_s=0.0)
    assert g.update(40.0, 60.0, 0.0) is None
    assert g.update(40.0, 60.0, 0.1).new == 42.0  # 18 dB, not 40


def test_after_a_change_the_gain_waits_settle_s_and_two_fresh_frames() -> None:
    g = gain(smoothing=1.0, fine_frames=2, settle_s=0.25, coarse_frames=1)
    assert g.update(12.0, 30.0, 0.0).new == 18.0
    assert g.update(12.0, 18.0, 0.125) is None  # settling
    assert g.update(4.0, 18.0, 0.25) is None  # settled exactly now: counted, but one frame only
    assert g.update(4.0, 18.0, 0.375).new == 15.0  # the second frame: a fine step
    assert g.update(math.nan, 15.0, 5.0) is None


def test_the_reason_says_dark_or_bright_and_the_size() -> None:
    g = gain(smoothing=1.0, fine_frames=1, settle_s=0.0)
    assert g.update(-2.5, 30.0, 0.0).reason == "image too dark by 2.5 dB"
    assert g.update(0.5, 30.0, 1.0) is None
    assert g.update(3.0, 30.0, 2.0).reason == "image too bright by 3.0 dB"


def test_depth_hysteresis_at_exactly_the_margin_and_in_both_directions() -> None:
    steps = (40.0, 60.0, 80.0)
    # from 60 toward 80: midpoint 70, margin 0.2 of the 20 mm gap: the best depth must reach 74
    assert depth_step_for(74.0, 60.0, steps, 0.2) == 80.0
    assert depth_step_for(73.5, 60.0, steps, 0.2) == 60.0
    # from 60 toward 40: midpoint 50, the best depth must reach 46
    assert depth_step_for(46.0, 60.0, steps, 0.2) == 40.0
    assert depth_step_for(46.5, 60.0, steps, 0.2) == 60.0
    # a current depth that is not one of the steps: the nearest step, no hysteresis
    assert depth_step_for(72.0, 61.0, steps, 0.2) == 80.0
    assert depth_step_for(72.0, 60.0 + 1e-7, steps, 0.2) == 60.0  # on the step within 1e-6


def test_depth_leans_deep_the_boundary_on_the_shallower_step() -> None:
    """The best depth is the shallowest step that frames the target: one above a step asks for the
    next one (boundary 0), with the same hysteresis of 20% of the gap around that boundary."""
    steps = (40.0, 60.0, 80.0)
    assert depth_step_for(60.0, math.nan, steps, 0.2, 0.0) == 60.0  # on a step: that step
    assert depth_step_for(60.5, math.nan, steps, 0.2, 0.0) == 80.0  # above it: the next
    assert depth_step_for(10.0, math.nan, steps, 0.2, 0.0) == 40.0
    assert depth_step_for(500.0, math.nan, steps, 0.2, 0.0) == 80.0
    # from 60 toward 80: the boundary is 60 itself, and the best depth must reach 64
    assert depth_step_for(63.5, 60.0, steps, 0.2, 0.0) == 60.0
    assert depth_step_for(64.0, 60.0, steps, 0.2, 0.0) == 80.0
    # from 60 toward 40: the boundary is 40, and the best depth must fall to 36
    assert depth_step_for(36.5, 60.0, steps, 0.2, 0.0) == 60.0
    assert depth_step_for(36.0, 60.0, steps, 0.2, 0.0) == 40.0
    assert AutoDepth(LIMITS).recommend(61.0) == 80.0  # the service's default leans deep
    assert AutoDepth(LIMITS, DepthParams(boundary=0.5)).recommend(61.0) == 60.0  # 0.5: the nearest


@given(
    st.floats(0.0, 300.0),
    st.sampled_from((math.nan, 40.0, 60.0, 80.0, 100.0)),
    st.floats(0.0, 1.0),
)
def test_depth_without_hysteresis_is_the_first_step_past_its_boundary(
    best: float, current: float, boundary: float
) -> None:
    steps = LIMITS.depth_steps_mm
    chosen = depth_step_for(best, current, steps, 0.0, boundary)
    k = steps.index(chosen)
    assert k == 0 or best > steps[k - 1] + boundary * (chosen - steps[k - 1])
    assert k == len(steps) - 1 or best <= chosen + boundary * (steps[k + 1] - chosen)


def depth(**kw) -> AutoDepth:  # type: ignore[no-untyped-def]
    # The nearest step (boundary 0.5): the timing edges below are written for it; the service's
    # deep-leaning boundary has its own test above.
    base = dict(dwell_s=1.0, min_interval_s=2.0, window_s=0.5, margin=0.2, boundary=0.5)
    return AutoDepth(LIMITS, DepthParams(**{**base, **kw}))


def test_depth_acts_after_exactly_the_dwell_with_its_reason() -> None:
    d = depth()
    assert d.update(100.0, 60.0, 0.0) is None  # the candidate appears
    assert d.update(100.0, 60.0, 0.5) is None
    change = d.update(100.0, 60.0, 1.0)  # held exactly dwell_s
    assert change == Change("depth_mm", 60.0, 100.0, "target needs a deeper view (best 100 mm, stable 1.0 s)")
    d = depth()
    d.update(40.0, 100.0, 10.0)
    assert d.update(40.0, 100.0, 11.0).reason.startswith("target needs a shallower view (best 40 mm")
    assert d.update(math.nan, 40.0, 20.0) is None


def test_at_most_one_depth_change_per_interval_counted_from_the_last() -> None:
    d = depth(dwell_s=0.0)
    d.update(100.0, 60.0, 0.0)
    assert d.update(100.0, 60.0, 0.0).new == 100.0
    d.update(40.0, 100.0, 1.0)  # window (0.5 s) holds only this one now
    assert d.update(40.0, 100.0, 1.5) is None  # 1.5 s after the change: too soon
    assert d.update(40.0, 100.0, 2.0).new == 40.0  # exactly min_interval_s after it


def test_the_depth_window_drops_a_value_exactly_window_s_old() -> None:
    d = depth(dwell_s=0.0, window_s=0.5)
    assert d.update(100.0, 60.0, 0.0) is None  # a candidate: 100
    # 0.5 s later the first value is out of the window: the median is 40, a new candidate (40) ...
    assert d.update(40.0, 60.0, 0.5) is None
    # ... confirmed by the next frame (with 100 still in, the median would be 70: stay at 60)
    assert d.update(40.0, 60.0, 0.5) == Change(
        "depth_mm", 60.0, 40.0, "target needs a shallower view (best 40 mm, stable 0.0 s)"
    )


def test_the_manual_pause_has_nothing_left_for_an_untouched_parameter() -> None:
    o = ManualOverride(pause_s=10.0)
    assert o.remaining("gain_db", 5.0) == 0.0 and not o.paused("gain_db", 5.0)
    assert o.note_manual("gain_db", 5.0) == 15.0
    assert o.remaining("gain_db", 7.5) == 7.5 and o.remaining("gain_db", 20.0) == 0.0
    assert o.remaining("depth_mm", 7.5) == 0.0


def test_the_change_detector_defaults_one_thousandth_and_one_second() -> None:
    det = ManualChangeDetector()
    assert not det.observe("gain_db", 40.0, 0.0)
    assert not det.observe("gain_db", 40.0005, 0.1)  # within 1e-3: the same value
    assert det.observe("gain_db", 40.5, 0.2)  # half a dB: somebody's change
    det.expect("gain_db", 42.0, 1.0)  # ours: 40.5 -> 42
    assert not det.observe("gain_db", 40.5, 1.5)  # an older frame, within the 1 s grace
    assert det.observe("gain_db", 40.5, 2.5)  # 1.5 s later it is a change again
    det.announce("depth_mm", 80.0)  # no slack unless said
    det.observe("depth_mm", 60.0, 3.0)
    assert det.observe("depth_mm", 80.5, 3.1)  # not the announced value
    det.announce("freq_mhz", 5.0)
    det.observe("freq_mhz", 3.5, 4.0)
    det.cancel("freq_mhz")  # the probe refused: a frame at 5.0 now is not ours
    assert det.observe("freq_mhz", 5.0, 4.1)


def test_the_change_detector_edges_are_inclusive() -> None:
    det = ManualChangeDetector(tolerance=0.25, grace_s=1.0)
    det.observe("gain_db", 40.0, 0.0)
    assert not det.observe("gain_db", 40.25, 0.1)  # exactly the tolerance: the same value
    det.announce("gain_db", 45.0, slack=0.5)
    assert not det.observe("gain_db", 45.75, 0.2)  # slack + tolerance exactly: ours in flight
    det.expect("gain_db", 45.5, 0.3)  # read back: 40 was ours to leave
    assert not det.observe("gain_db", 40.25, 1.25)  # tolerance exactly, 0.95 s after: an old frame
    assert det.observe("gain_db", 40.0, 1.3)  # exactly grace_s after: a change
    det.announce("depth_mm", 80.0)
    det.expect("gain_db", 46.0, 2.0)
    assert det.observe("depth_mm", 60.0, 2.1) is False  # first value: known now
    assert not det.observe("depth_mm", 80.0, 2.2)  # the announcement for depth still stands


def test_a_read_back_ends_the_announcement_and_cancelling_nothing_is_harmless() -> None:
    det = ManualChangeDetector()
    det.cancel("gain_db")  # nothing announced: nothing to do
    det.observe("gain_db", 40.0, 0.0)
    det.announce("gain_db", 50.0)
    det.expect("gain_db", 49.0, 0.5)  # the probe snapped it: 49 read back, the announcement is over
    assert det.observe("gain_db", 50.0, 3.0)  # a frame at 50 later is somebody else's change
