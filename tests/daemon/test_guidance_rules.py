"""The guidance rules the design promises, one test each: urgent words skip the wait, the jitter filter
smooths, the view search stays off while the camera tracks, no capture off the skin, the sign threshold.

Each test was written against a deliberately planted bug (docs/testing.md, "mutants that survived")
and fails with it: the numbers come from the rule's definition, not from a run of the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.policy.guidance import (
    CaptureTrigger,
    Correction,
    CorrectionFilter,
    GuidanceEngine,
    GuidanceParams,
    Instruction,
    Stabilizer,
)
from service.policy.search import SearchParams, unreliable_axes


def instruction(ident: str) -> Instruction:
    return Instruction(ident, 0.0, "", 1.0, "test")


def corr(t=(0.0, 0.0, 0.0), r=(0.0, 0.0, 0.0), sigma=2.0) -> Correction:
    return Correction(t, r, sigma, sigma)


@pytest.mark.parametrize("urgent", sorted(Stabilizer.URGENT))
def test_contact_problems_are_shown_at_once_other_changes_wait(urgent: str) -> None:
    st = Stabilizer(switch_s=0.3)
    assert st.update(instruction("slide_head"), 0.0).id == "slide_head"
    assert st.update(instruction(urgent), 0.01).id == urgent  # the same frame: no 0.3 s wait
    # leaving the urgent word is an ordinary change: it waits switch_s
    assert st.update(instruction("slide_head"), 0.02).id == urgent
    assert st.update(instruction("slide_head"), 0.30).id == urgent
    assert st.update(instruction("slide_head"), 0.33).id == "slide_head"
    # an ordinary change waits too
    assert st.update(instruction("rotate_cw"), 0.40).id == "slide_head"
    assert st.update(instruction("rotate_cw"), 0.71).id == "rotate_cw"


def test_one_contact_problem_replacing_another_waits() -> None:
    st = Stabilizer(switch_s=0.3)
    st.update(instruction("more_gel"), 0.0)
    assert st.update(instruction("press"), 0.1).id == "more_gel"
    assert st.update(instruction("press"), 0.45).id == "press"


def test_correction_filter_is_first_order_smoothing_with_its_time_constant() -> None:
    f = CorrectionFilter(time_constant_s=0.2)
    assert f.update(corr(t=(0.0, 0.0, 0.0)), 0.0).translation_mm == (0.0, 0.0, 0.0)
    out = f.update(corr(t=(10.0, -20.0, 0.0), r=(0.0, 0.0, 30.0)), 0.1)
    a = 1.0 - math.exp(-0.1 / 0.2)
    assert out.translation_mm == pytest.approx((10.0 * a, -20.0 * a, 0.0))
    assert out.rotation_deg == pytest.approx((0.0, 0.0, 30.0 * a))
    # after many time constants the filter has followed
    out = f.update(corr(t=(10.0, -20.0, 0.0), r=(0.0, 0.0, 30.0)), 5.0)
    assert out.translation_mm == pytest.approx((10.0, -20.0, 0.0), abs=1e-6)
    # an unknown correction passes through and restarts the filter
    assert not f.update(Correction(), 5.1).known
    assert f.update(corr(t=(3.0, 0.0, 0.0)), 5.2).translation_mm == (3.0, 0.0, 0.0)


def test_the_engine_smooths_a_jump_in_the_correction() -> None:
    engine = GuidanceEngine()
    for i in range(30):
        shown, _ = engine.update(corr(t=(20.0, 0.0, 0.0)), 0.3, 1.0, i / 30)
    assert shown.id == "slide_head" and shown.magnitude == 20.0
    shown, _ = engine.update(corr(t=(40.0, 0.0, 0.0)), 0.3, 1.0, 30 / 30)  # one frame later: a jump
    expected = 20.0 + 20.0 * (1.0 - math.exp(-(1 / 30) / 0.2))  # ≈ 23.1 mm, not 40
    assert shown.magnitude == pytest.approx(expected, abs=0.1)


def test_no_view_search_while_the_camera_tracks() -> None:
    """Unreliable axes, the followed ones done, the view not good: the image alone searches; with a
    camera correction the camera tells the sign, so the engine holds still instead of searching."""
    params = GuidanceParams(unreliable_axes=frozenset({"dy"}))
    done = corr(t=(1.0, 0.0, 0.0))  # inside the tolerance on every followed axis
    camera = corr(t=(1.0, 0.0, 0.0), sigma=1.0)
    alone = GuidanceEngine(params)
    ids = {alone.update(done, 0.3, 1.0, i / 10, visible=0.8)[0].id for i in range(40)}
    assert ids & {"slide_left", "slide_right"}  # the search asks for sweeps along dy
    tracked = GuidanceEngine(params)
    ids = {tracked.update(done, 0.3, 1.0, i / 10, camera=camera, visible=0.8)[0].id for i in range(40)}
    assert ids == {"hold_still"}
    assert tracked.search.move is None


def test_no_capture_without_skin_contact() -> None:
    engine = GuidanceEngine(GuidanceParams(good_quality=0.8, capture_after_s=1.0, contact_min=0.5))
    fired = [engine.update(corr(), 0.95, 0.3, i / 30)[1] for i in range(90)]  # 3 s, pressed too lightly
    assert not any(fired)
    assert engine.update(corr(), 0.95, 0.3, 3.0)[0].id == "press"
    times = [i / 30 for i in range(91, 180) if engine.update(corr(), 0.95, 1.0, i / 30)[1]]
    assert len(times) == 1  # in contact: one capture, a second after contact came back
    assert times[0] - 91 / 30 == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("accuracy", "searched"), [(0.50, True), (0.62, True), (0.6499, True), (0.65, False), (0.80, False)]
)
def test_an_axis_is_searched_below_65_percent_sign_accuracy(accuracy: float, searched: bool) -> None:
    manifest = {"precision": "int8", "evaluation": {"int8": {"direction_sign_by_axis": {"dy": accuracy}}}}
    assert (unreliable_axes(manifest) == {"dy"}) is searched


# --- with the target belief (camera tracking): image and belief must agree -----------------------------


def _frames(engine: GuidanceEngine, belief: Correction, quality: float, seconds: float = 2.0,
            **kw: object) -> list[tuple[Instruction, bool]]:  # fmt: skip
    return [
        engine.update(corr(t=(30.0, 0, 0)), quality, 1.0, i / 30, belief=belief, **kw)  # type: ignore[arg-type]
        for i in range(int(seconds * 30))
    ]


def test_with_a_belief_its_correction_replaces_the_image_one_and_names_its_basis() -> None:
    out = _frames(GuidanceEngine(), corr(t=(0.0, 12.0, 0.0)), 0.3, seconds=0.5)
    assert {(i.id, i.basis, i.magnitude) for i, _ in out} == {
        ("slide_right", "belief", 12.0)
    }  # not the 30 mm of the image (probe +y: the patient's right)
    assert not any(c for _, c in out)


def test_with_a_belief_hold_still_and_the_capture_need_both_to_agree() -> None:
    there = corr(t=(4.0, 0.0, 0.0), r=(0.0, 0.0, -4.0))  # exactly the tolerances: there
    out = _frames(GuidanceEngine(), there, 0.85)
    captures = [i / 30 for i, (_, c) in enumerate(out) if c]
    assert len(captures) == 1 and captures[0] == pytest.approx(1.0, abs=0.05)  # capture_after_s
    assert out[0][0].id == "hold_still" and out[-1][0].id == "good_view"
    # the belief says "not there" (4.1 mm): however good the image looks, no hold, no capture
    out = _frames(GuidanceEngine(), corr(t=(4.1, 0.0, 0.0)), 0.95)
    assert {i.id for i, _ in out} == {"slide_head"} and not any(c for _, c in out)
    # the belief says "there" but the image is not good: hold (nothing to follow), no capture
    out = _frames(GuidanceEngine(), corr(t=(1.0, 0.0, 0.0)), 0.79)
    assert {i.id for i, _ in out} == {"hold_still"} and not any(c for _, c in out)


def test_with_a_belief_hold_still_keeps_its_hysteresis_but_a_belief_elsewhere_ends_it() -> None:
    engine = GuidanceEngine()
    assert _frames(engine, corr(t=(1.0, 0.0, 0.0)), 0.85)[-1][0].id == "good_view"
    # The belief drifts just past the tolerance (4.5 mm, within 1.2 of it) and the image dips a little
    # (0.77, within 0.05 of good): still "hold still", not a flip to a move and back.
    later = [engine.update(corr(), 0.77, 1.0, 2.0 + i / 30, belief=corr(t=(4.5, 0, 0)))[0] for i in range(30)]
    assert {i.id for i in later} <= {"hold_still", "good_view"}
    # The belief moves away (20 mm): the image's good score must not keep the novice there.
    away = [engine.update(corr(), 0.77, 1.0, 3.0 + i / 30, belief=corr(t=(20.0, 0, 0)))[0] for i in range(30)]
    assert away[-1].id == "slide_head"


def test_with_a_belief_the_models_own_score_at_the_view_counts_as_good() -> None:
    there = corr(t=(1.0, 0.0, 0.0))
    out = _frames(GuidanceEngine(), there, 0.65, belief_good_quality=0.6)  # the model peaks at 0.6
    assert sum(c for _, c in out) == 1 and out[-1][0].id == "good_view"
    out = _frames(GuidanceEngine(), there, 0.59, belief_good_quality=0.6)
    assert not any(c for _, c in out)
    out = _frames(GuidanceEngine(), there, 0.85, belief_good_quality=0.95)  # never above good_quality
    assert sum(c for _, c in out) == 1
    out = _frames(GuidanceEngine(), there, 0.79, belief_good_quality=0.95)
    assert not any(c for _, c in out)


def test_with_a_belief_the_correction_is_smoothed_too() -> None:
    engine = GuidanceEngine()
    first = engine.update(corr(), 0.3, 1.0, 0.0, belief=corr(t=(20.0, 0, 0)))[0]
    later = engine.update(corr(), 0.3, 1.0, 0.2, belief=corr(t=(10.0, 0, 0)))[0]
    assert (first.id, first.magnitude) == ("slide_head", 20.0)
    # one time constant (0.2 s) later the filter is 1 − e⁻¹ of the way from 20 to 10 mm
    assert (later.id, later.magnitude) == ("slide_head", round(20 - 10 * (1 - math.exp(-1)), 1))


def test_in_a_shadow_the_belief_guides_instead_of_asking_for_gel_and_nothing_is_captured() -> None:
    # No contact (0.05) with the probe on the skin: the belief's motion is shown, not "add gel"; and
    # a view good by every other measure is still not captured without contact.
    engine = GuidanceEngine()
    shown = engine.update(corr(), 0.3, 0.05, 0.0, belief=corr(t=(20.0, 0, 0)), shadowed=True)[0]
    assert shown.id == "slide_head"
    assert engine.update(corr(), 0.3, 0.05, 0.1, belief=corr(t=(20.0, 0, 0)))[0].id == "more_gel"
    there = GuidanceEngine()
    out = [there.update(corr(), 0.9, 0.05, i / 10, belief=corr(), shadowed=True) for i in range(40)]
    assert out[-1][0].id == "hold_still" and not any(capture for _, capture in out)


# --- the engine's other rules, at their edges (from the mutation report: docs/testing.md) --------------


def test_the_filter_smooths_every_component_and_keeps_the_new_uncertainty() -> None:
    f = CorrectionFilter(time_constant_s=0.2)
    f.update(Correction((2.0, 4.0, 6.0), (1.0, 2.0, 3.0), 3.0, 4.0), 0.0)
    out = f.update(Correction((12.0, -6.0, 16.0), (11.0, -8.0, 13.0), 2.0, 7.0), 0.2)
    a = 1.0 - math.exp(-1.0)
    assert out.translation_mm == pytest.approx((2 + 10 * a, 4 - 10 * a, 6 + 10 * a))
    assert out.rotation_deg == pytest.approx((1 + 10 * a, 2 - 10 * a, 3 + 10 * a))
    assert (out.sigma_mm, out.sigma_deg) == (2.0, 7.0)


def test_the_capture_fires_at_exactly_the_threshold_and_the_hold_time() -> None:
    trigger = CaptureTrigger(threshold=0.75, hold_s=1.0, rearm_margin=0.25)
    assert trigger.captured is False
    assert [trigger.update(0.75, t) for t in (0.0, 0.5, 1.0)] == [False, False, True]
    assert trigger.captured is True


def test_the_capture_rearms_only_below_the_margin() -> None:
    trigger = CaptureTrigger(threshold=0.75, hold_s=1.0, rearm_margin=0.25)
    assert trigger.update(0.9, 0.0) is False and trigger.update(0.9, 1.0) is True
    # a dip into the margin (down to exactly threshold − margin) is the same view: no second capture
    for t, q in ((1.5, 0.6), (2.0, 0.5), (2.5, 0.9), (4.0, 0.9)):
        assert trigger.update(q, t) is False, (t, q)
    assert trigger.captured is True
    # below the margin it is a new view: it re-arms, and a new hold captures again
    assert trigger.update(0.49, 5.0) is False and not trigger.captured
    assert [trigger.update(0.9, t) for t in (6.0, 7.0)] == [False, True]


def test_before_the_capture_a_dip_below_the_threshold_restarts_the_hold() -> None:
    trigger = CaptureTrigger(threshold=0.75, hold_s=1.0, rearm_margin=0.25)
    assert not any(trigger.update(0.9, t) for t in (0.0, 0.25, 0.5))
    assert trigger.update(0.7, 0.75) is False  # in the margin, but nothing captured yet: restart
    assert [trigger.update(0.9, t) for t in (1.0, 1.5, 2.0)] == [False, False, True]


def test_the_switch_happens_at_exactly_switch_s() -> None:
    st = Stabilizer(switch_s=0.25)
    st.update(instruction("slide_head"), 0.0)
    assert st.update(instruction("rotate_cw"), 0.25).id == "slide_head"
    assert st.update(instruction("rotate_cw"), 0.5).id == "rotate_cw"  # 0.25 s later: exactly the wait
    assert Stabilizer().update(instruction("a"), 0.0).id == "a"
    default = Stabilizer()  # the default wait is the documented 0.3 s (GuidanceParams.switch_s)
    default.update(instruction("slide_head"), 0.0)
    default.update(instruction("rotate_cw"), 0.1)
    assert default.update(instruction("rotate_cw"), 0.45).id == "rotate_cw"


def test_a_capture_needs_at_least_contact_min() -> None:
    engine = GuidanceEngine(GuidanceParams(contact_min=0.5))
    fired = [engine.update(corr(), 0.95, 0.5, i / 30)[1] for i in range(45)]  # exactly contact_min
    assert sum(fired) == 1


def test_after_the_capture_the_good_view_follows_the_quality_and_keeps_its_hysteresis() -> None:
    engine = GuidanceEngine()
    for i in range(40):
        shown, _ = engine.update(corr(), 0.9, 1.0, i / 30)
    assert (shown.id, shown.confidence) == ("good_view", 0.9)
    shown, _ = engine.update(corr(), 0.95, 1.0, 40 / 30)
    assert (shown.id, shown.confidence) == ("good_view", 0.95)  # same words: the new confidence at once
    shown, _ = engine.update(corr(t=(200.0, 0, 0)), 0.5, 1.0, 41 / 30)  # after the capture: ~31 mm, filtered
    assert shown.id == "hold_still"  # the slide waits switch_s like any change of words (re-armed: no "good")
    later = [engine.update(corr(t=(200.0, 0, 0)), 0.5, 1.0, i / 30)[0].id for i in range(42, 60)]
    assert later[-1] == "slide_head" and later[0] == "hold_still"


def test_the_engine_fuses_the_camera_and_names_from_the_tracked_orientation() -> None:
    unknown = Correction()  # the image alone cannot tell
    camera = corr(t=(20.0, 0.0, 0.0))
    assert GuidanceEngine().update(unknown, 0.3, 1.0, 0.0)[0].id == "scan"
    assert GuidanceEngine().update(unknown, 0.3, 1.0, 0.0, camera=camera)[0].id == "slide_head"
    tracked = GuidanceEngine().update(corr(t=(20.0, 0, 0)), 0.3, 1.0, 0.0, patient_from_probe=np.eye(3))[0]
    assert (tracked.id, tracked.basis) == ("slide_left", "camera")  # probe x = patient x (left) here


def test_no_search_at_exactly_good_quality() -> None:
    engine = GuidanceEngine(GuidanceParams(unreliable_axes=frozenset({"dy"})))
    ids = {engine.update(corr(t=(1.0, 0, 0)), 0.8, 1.0, i / 10, visible=0.8)[0].id for i in range(40)}
    assert ids <= {"hold_still", "good_view"}


def test_search_moves_are_named_from_the_tracked_orientation_with_the_given_steps() -> None:
    params = GuidanceParams(unreliable_axes=frozenset({"dy"}))
    done = corr(t=(1.0, 0.0, 0.0))
    default = GuidanceEngine(params)
    shown = [default.update(done, 0.3, 1.0, i / 10, visible=0.8)[0] for i in range(40)]
    sweeps = [s for s in shown if s.id.startswith("slide_")]
    assert {s.id for s in sweeps} <= {"slide_left", "slide_right"} and {s.magnitude for s in sweeps} == {8.0}
    # probe y along the patient's head-feet axis: the same dy search is a slide toward head or feet
    tracked = GuidanceEngine(params, SearchParams(steps=(("dy", 5.0),)))
    shown = [
        tracked.update(done, 0.3, 1.0, i / 10, visible=0.8, patient_from_probe=np.eye(3))[0]
        for i in range(40)
    ]
    sweeps = [s for s in shown if s.id.startswith("slide_")]
    assert (
        sweeps
        and {s.id for s in sweeps} <= {"slide_head", "slide_feet"}
        and {s.magnitude for s in sweeps} == {5.0}
    )
