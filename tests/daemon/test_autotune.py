"""Auto gain and auto depth against simple plants with the real sign conventions; manual override."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.policy.autotune import (
    AutoDepth,
    AutoGain,
    ContactGainGuard,
    DepthParams,
    ManualChangeDetector,
    ManualOverride,
    ProbeLimits,
    SkinMemory,
    depth_step_for,
)

LIMITS = ProbeLimits(
    gain_min_db=0, gain_max_db=90, gain_step_db=1.0, depth_steps_mm=(40, 60, 80, 100, 120, 150)
)


def _run_gain_plant(start_gain: float, best_gain: float, seconds: float = 6.0, delay_frames: int = 2):
    """The image shows gain error = gain - best (+ measurement noise), a few frames late."""
    import random

    rng = random.Random(7)
    ctrl = AutoGain(LIMITS)
    gain, history, changes = start_gain, [start_gain] * delay_frames, []
    for i in range(int(seconds * 30)):
        now = i / 30
        seen_gain = history[-delay_frames]
        change = ctrl.update(seen_gain - best_gain + rng.gauss(0, 0.7), gain, now)
        if change:
            assert change.new == LIMITS.quantize_gain(change.new)
            big = abs(change.new - change.old) > ctrl.params.max_step_db
            assert not big or abs(change.new - change.old) <= abs(seen_gain - best_gain) + 3  # coarse step
            changes.append(change)
            gain = change.new
        history.append(gain)
    return gain, changes


def test_gain_converges_from_15_db_too_low_without_oscillation() -> None:
    gain, changes = _run_gain_plant(start_gain=35, best_gain=50)
    assert abs(gain - 50) < AutoGain(LIMITS).params.dead_band_db
    steps = [c.new - c.old for c in changes]
    assert all(s > 0 for s in steps), f"overshoot/oscillation: {steps}"
    assert len(changes) <= 3  # one coarse step to the estimate, then at most a fine touch or two
    assert "too dark" in changes[0].reason
    assert changes[0].new - changes[0].old >= 12  # most of the 15 dB at once, not 4 dB at a time


def test_gain_too_bright_goes_down_and_dead_band_holds() -> None:
    gain, changes = _run_gain_plant(start_gain=70, best_gain=58)
    assert abs(gain - 58) < 2 and all(c.new < c.old for c in changes)
    ctrl = AutoGain(LIMITS)
    assert all(ctrl.update(1.0, 50, t / 30) is None for t in range(90))


def test_gain_clamps_to_probe_range_and_step() -> None:
    limits = ProbeLimits(gain_min_db=10, gain_max_db=40, gain_step_db=2.5, depth_steps_mm=(50,))
    ctrl = AutoGain(limits)
    assert ctrl.update(-30.0, 38.0, 0.0) is None  # a coarse step waits for a second frame
    change = ctrl.update(-30.0, 38.0, 0.04)
    assert change is not None and change.new == 40.0
    top = AutoGain(limits)
    assert top.update(-30.0, 40.0, 0.0) is None and top.update(-30.0, 40.0, 0.04) is None  # at the top
    assert limits.quantize_gain(23.4) == 22.5


def test_depth_deepens_after_dwell_and_at_most_once_a_second() -> None:
    ctrl = AutoDepth(LIMITS, DepthParams(dwell_s=1.0, min_interval_s=1.0))
    depth, changes = 60.0, []
    target_bottom = 130.0  # the structure ends here: best view about 130 mm
    for i in range(8 * 30):
        now = i / 30
        best = depth * 1.3 if depth < target_bottom else target_bottom  # echo to the bottom: deeper
        change = ctrl.update(best, depth, now)
        if change:
            changes.append((now, change))
            depth = change.new
    assert depth == 120 or depth == 150
    assert changes[0][0] >= 1.0 and changes[0][1].new > 60
    times = [t for t, _ in changes]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    assert "deeper" in changes[0][1].reason


def test_depth_ignores_a_flickering_recommendation() -> None:
    ctrl = AutoDepth(LIMITS)
    for i in range(200):
        best = 100 if i % 10 < 5 else 60  # flips every 1/6 s: never stable for the dwell
        assert ctrl.update(best, 80, i / 30) is None


def test_manual_override_pauses_per_parameter() -> None:
    ov = ManualOverride(pause_s=5)
    ov.note_manual("gain_db", 10.0)
    assert ov.paused("gain_db", 14.9) and not ov.paused("depth_mm", 11)
    assert not ov.paused("gain_db", 15.0) and ov.remaining("gain_db", 12.0) == pytest.approx(3.0)


def test_detector_tells_our_changes_from_manual_ones() -> None:
    d = ManualChangeDetector(grace_s=1.0)
    assert not d.observe("gain_db", 40, 0.0)  # first sight
    d.expect("gain_db", 44, 1.0)  # we set it
    assert not d.observe("gain_db", 40, 1.05)  # a frame from before our change
    assert not d.observe("gain_db", 44, 1.1)
    assert d.observe("gain_db", 30, 2.0)  # somebody pressed a button
    assert not d.observe("gain_db", 30, 2.1)


def test_detector_excuses_frames_racing_our_own_changes() -> None:
    d = ManualChangeDetector(grace_s=1.0)
    assert not d.observe("gain_db", 12, 0.0)
    d.announce("gain_db", 16, slack=1.0)  # set_param sent; the device applies it at once ...
    assert not d.observe("gain_db", 16, 0.01)  # ... and streams it before the read-back arrives
    d.expect("gain_db", 16, 0.02)
    d.announce("gain_db", 20, slack=1.0)
    d.expect("gain_db", 20, 0.3)
    assert not d.observe("gain_db", 12, 0.35)  # in flight from two changes ago
    assert not d.observe("gain_db", 16, 0.4)
    assert d.observe("gain_db", 12, 1.5)  # long after: that was a person
    d.announce("gain_db", 30, slack=1.0)
    d.cancel("gain_db")  # refused by the device
    assert d.observe("gain_db", 30, 1.6)


def test_gain_reaches_3_db_within_10_frames_from_20_db_off() -> None:
    """Coarse step: the whole estimated error at once, so ±3 dB well inside 10 frames at 10 Hz."""
    for start, best in ((30, 50), (70, 50), (5, 25)):
        ctrl, gain = AutoGain(LIMITS), float(start)
        for frame in range(10):
            change = ctrl.update(gain - best + (0.8 if frame % 2 else -0.8), gain, frame / 10)
            gain = change.new if change else gain
        assert abs(gain - best) <= 3, (start, best, gain)


def test_gain_fine_steps_need_two_frames_and_stay_bounded() -> None:
    ctrl = AutoGain(LIMITS)
    assert ctrl.update(4.0, 50, 0.0) is None  # one frame inside the coarse band: not enough
    change = ctrl.update(4.0, 50, 0.1)
    assert change is not None and change.new == 47  # at most max_step_db (3 dB)
    assert ctrl.update(4.0, 47, 0.2) is None  # settling after the change


def test_depth_step_hysteresis_between_neighbours() -> None:
    steps = (40.0, 60.0, 80.0, 100.0)
    assert depth_step_for(71.0, 60.0, steps, 0.2) == 60.0  # just past the midpoint: stay
    assert depth_step_for(75.0, 60.0, steps, 0.2) == 80.0  # clearly past it: move
    assert depth_step_for(69.0, 80.0, steps, 0.2) == 80.0  # and the same on the way back
    assert depth_step_for(64.0, 80.0, steps, 0.2) == 60.0
    assert depth_step_for(95.0, 40.0, steps, 0.2) == 100.0  # far away: the nearest step
    assert depth_step_for(52.0, 55.0, steps, 0.2) == 60.0


def test_depth_median_ignores_single_wild_frames() -> None:
    ctrl = AutoDepth(LIMITS)
    for i in range(90):  # every fifth frame says 150 mm; the median stays at 80
        assert ctrl.update(150.0 if i % 5 == 0 else 80.0, 80.0, i / 30) is None


def test_a_frame_from_before_our_change_does_not_undo_the_read_back() -> None:
    """The display's gain + answered with the old gain: a frame taken before the change, handled just
    after the read-back, set the state back to 20 dB (CI, test_display). It is stale, not news."""
    import logging

    from service.daemon.clock import SimClock
    from service.daemon.config import AutoConfig
    from service.daemon.probe_state import ProbeState
    from service.seams import MemoryPublisher

    state = ProbeState(MemoryPublisher(), SimClock(), AutoConfig(), logging.getLogger(__name__))
    state.observe_frame({"gain_db": 20.0}, 0.0)
    state.announce("gain_db", 23.0, slack=1.0)
    state.confirm("gain_db", 23.0, 0.5)
    state.observe_frame({"gain_db": 20.0}, 0.55)  # in flight from before the change
    assert state.setting("gain_db") == 23.0
    state.observe_frame({"gain_db": 23.0}, 0.6)
    state.observe_frame({"gain_db": 17.0}, 2.0)  # long after, another value: a person, and it wins
    assert state.setting("gain_db") == 17.0 and state.paused("gain_db", 2.5)


def test_contact_lost_after_the_gain_moved_brings_the_gain_back() -> None:
    guard = ContactGainGuard()
    assert guard.update(0.9, 50.0, 0.0) is None  # skin seen at 50 dB
    assert guard.update(0.05, 20.0, 0.5) is None  # black image, no contact: the clock starts
    assert guard.update(0.05, 20.0, 1.2) is None  # not yet 1 s
    change = guard.update(0.05, 20.0, 1.6)
    assert change is not None and (change.old, change.new) == (20.0, 50.0) and "50 dB" in change.reason
    assert guard.update(0.05, 20.0, 1.7) is None  # once per loss


def test_contact_lost_at_the_same_gain_is_the_probe_lifted_not_the_gain() -> None:
    guard = ContactGainGuard()
    guard.update(0.9, 50.0, 0.0)
    assert all(guard.update(0.05, 47.0, t / 10) is None for t in range(1, 50))  # 3 dB: not the gain
    assert all(guard.update(0.3, 20.0, 5 + t / 10) is None for t in range(50))  # partial contact: wait


def _dark(guard: ContactGainGuard, gain: float, t0: float, seconds: float, on_skin: bool) -> list:
    """Frames of a black image (no contact) every 0.1 s; the guard's changes, applied as they come."""
    changes = []
    for k in range(round(seconds * 10)):
        change = guard.update(0.02, gain, t0 + k / 10, on_skin=on_skin)
        if change is not None:
            changes.append(change)
            gain = change.new
    return changes


def test_on_the_skin_a_black_image_raises_the_gain_step_by_step_to_the_top() -> None:
    # A probe that slid into a shadow: skin seen at 23 dB, then black at that same gain; the camera
    # says it was not lifted. 10 dB a step, one step per second of no contact, up to the top (60).
    limits = ProbeLimits(gain_min_db=0, gain_max_db=60, gain_step_db=1.0)
    guard = ContactGainGuard(limits)
    guard.update(0.9, 23.0, 0.0)
    steps = _dark(guard, 23.0, 0.1, 6.0, on_skin=True)
    assert [(c.old, c.new) for c in steps] == [
        (23.0, 33.0),
        (33.0, 43.0),
        (43.0, 53.0),
        (53.0, 60.0),
        (60.0, 23.0),
    ]
    assert all("gain up" in c.reason for c in steps[:4]) and "up to 60 dB" in steps[4].reason
    assert _dark(guard, 23.0, 6.2, 5.0, on_skin=True) == []  # once per loss: then it is the gel
    assert guard.update(0.9, 23.0, 12.0) is None  # skin again: a later loss may search again
    assert [c.new for c in _dark(guard, 23.0, 12.1, 1.3, on_skin=True)] == [33.0]


def test_contact_coming_back_stops_the_search_where_skin_was_seen() -> None:
    guard = ContactGainGuard(ProbeLimits(gain_min_db=0, gain_max_db=60))
    guard.update(0.9, 20.0, 0.0)
    assert [c.new for c in _dark(guard, 20.0, 0.1, 1.3, on_skin=True)] == [30.0]
    assert guard.update(0.8, 30.0, 1.5) is None  # skin at 30 dB: auto gain takes it from here
    assert _dark(guard, 30.0, 1.6, 0.5, on_skin=True) == []  # a new loss waits its second again


def test_without_the_camera_saying_on_skin_the_gain_is_not_searched() -> None:
    guard = ContactGainGuard(ProbeLimits(gain_min_db=0, gain_max_db=60))
    guard.update(0.9, 23.0, 0.0)
    assert _dark(guard, 23.0, 0.1, 8.0, on_skin=False) == []  # a lifted probe: its gain was fine


def test_skin_memory_tells_a_lift_from_a_slide() -> None:
    skin = SkinMemory(lift_mm=3.0, shadow_s=3.0)
    beam_down = np.diag([1.0, -1.0, -1.0])  # beam axis along patient −z: into a patient lying below
    assert not skin.on_skin(np.zeros(3))  # no contact seen yet: not known
    skin.note(0.2, np.zeros(3), beam_down)
    assert not skin.on_skin(np.zeros(3))  # a frame without contact is not a contact pose
    skin.note(0.9, np.array([0.0, 0.0, 10.0]), beam_down)
    assert skin.on_skin(np.array([25.0, -15.0, 10.0]))  # slid 29 mm across the skin
    assert skin.on_skin(np.array([0.0, 0.0, 12.9]))  # 2.9 mm back along the beam: tremor
    assert not skin.on_skin(np.array([0.0, 0.0, 13.1]))  # 3.1 mm back: lifted
    assert skin.on_skin(np.array([0.0, 0.0, 4.0]))  # pressed in
    assert not skin.on_skin(None)  # not tracked now
    skin.forget()
    assert not skin.on_skin(np.array([0.0, 0.0, 10.0]))


def test_a_shadow_is_no_contact_on_the_skin_for_three_seconds() -> None:
    skin = SkinMemory(shadow_s=3.0)
    assert not skin.shadowed(0.1, True, 0.0)
    assert not skin.shadowed(0.1, True, 2.9)
    assert skin.shadowed(0.1, True, 3.0)
    assert not skin.shadowed(0.1, False, 3.1)  # lifted: the clock starts again
    assert not skin.shadowed(0.1, True, 5.0) and not skin.shadowed(0.1, True, 7.9)
    assert skin.shadowed(0.1, True, 8.0)
    assert not skin.shadowed(0.6, True, 8.1)  # contact again


# --- the guard's and the skin memory's edges (from the mutation report: docs/testing.md) -------------


def test_every_guard_change_is_a_gain_change_with_its_reason() -> None:
    limits = ProbeLimits(gain_min_db=0, gain_max_db=60)
    guard = ContactGainGuard(limits)
    guard.update(0.9, 50.0, 0.0)
    back = _dark(guard, 20.0, 0.1, 1.3, on_skin=True)  # moved 30 dB: back to where skin was seen first
    searched = _dark(guard, 50.0, 1.5, 3.5, on_skin=True)  # still black at 50: search up, then back
    assert [(c.old, c.new) for c in back + searched] == [(20.0, 50.0), (50.0, 60.0), (60.0, 50.0)]
    assert all(c.param == "gain_db" for c in back + searched)
    assert searched[0].reason == "no skin contact seen, yet the camera saw no lift: a darker region? gain up"
    assert searched[1].reason == "no skin contact seen up to 60 dB with the probe on the skin: back to 50 dB"


def test_the_guard_counts_contact_and_loss_at_their_exact_thresholds() -> None:
    guard = ContactGainGuard()
    guard.update(0.5, 50.0, 0.0)  # exactly SKIN_CONTACT: skin, at 50 dB
    guard.update(0.5, 40.0, 0.1)  # ... and again at 40 dB: the newest gain with skin counts
    assert guard.update(0.15, 20.0, 0.2) is None and guard.update(0.15, 20.0, 5.0) is None  # 0.15: not lost
    assert guard.update(0.1, 34.0, 5.1) is None  # lost from here
    change = guard.update(0.1, 34.0, 6.1)  # exactly lost_s later, exactly moved_db from 40
    assert change is not None and (change.old, change.new) == (34.0, 40.0)
    assert guard.update(0.1, 30.0, 7.0) is None  # lost again: the clock starts
    assert guard.update(0.5, 30.0, 7.5) is None  # one frame with skin (exactly SKIN_CONTACT) stops it
    assert guard.update(0.1, 24.0, 7.6) is None and guard.update(0.1, 24.0, 8.2) is None  # a new loss


def test_before_any_contact_the_first_frames_gain_is_where_the_guard_returns() -> None:
    guard = ContactGainGuard(ProbeLimits(gain_min_db=0, gain_max_db=60))
    assert guard.update(0.02, 30.0, 0.0) is None  # no contact from the start: the clock starts now
    change = guard.update(0.02, 40.0, 1.0)
    assert change is not None and (change.old, change.new) == (40.0, 30.0)
    fresh = ContactGainGuard(ProbeLimits(gain_min_db=0, gain_max_db=60))
    assert [c.new for c in _dark(fresh, 30.0, 0.0, 2.3, on_skin=True)] == [40.0, 50.0]  # never saw skin


def test_a_search_from_the_top_has_nowhere_to_go() -> None:
    guard = ContactGainGuard(ProbeLimits(gain_min_db=0, gain_max_db=60))
    guard.update(0.9, 60.0, 0.0)
    assert _dark(guard, 60.0, 0.1, 5.0, on_skin=True) == []


def test_skin_memory_defaults_and_edges() -> None:
    skin = SkinMemory()  # 3 mm of lift, 3 s of shadow
    beam_down = np.diag([1.0, -1.0, -1.0])
    skin.note(0.5, np.array([0.0, 0.0, 10.0]), beam_down)  # exactly SKIN_CONTACT: a contact pose
    assert skin.on_skin(np.array([0.0, 0.0, 13.0]))  # exactly 3 mm back: still on the skin
    assert not skin.on_skin(np.array([0.0, 0.0, 13.2]))
    assert not skin.shadowed(0.1, True, 0.0) and skin.shadowed(0.1, True, 3.0)
    assert not skin.shadowed(0.5, True, 3.1)  # exactly SKIN_CONTACT: contact, no shadow
    assert not skin.shadowed(0.1, True, 3.2) and not skin.shadowed(0.1, True, 6.1)
