"""The instruction chosen for one frame (service.policy.guidance.choose_instruction), at its edges:
contact and quality thresholds, the confidence from the uncertainty, units and rounding, the choice by
score (distance in tolerances) with the stickiness bonus, and words → motion for every action."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.policy.guidance import (
    Correction,
    GuidanceParams,
    choose_instruction,
    fuse_corrections,
    gated_unreliable,
    instruction_to_motion,
    mask_axes,
    model_correction,
    search_axes,
    within_tolerance,
)
from service.seams import ZERO3

P = GuidanceParams()  # contact 0.15 / 0.5, good quality 0.8, tolerances 4 mm / 4°, stickiness 1.3


def corr(t=(0.0, 0.0, 0.0), r=(0.0, 0.0, 0.0), sigma=2.0) -> Correction:  # type: ignore[no-untyped-def]
    return Correction(t, r, sigma, sigma)


def test_contact_thresholds_are_below_their_values_with_confidence_one_minus_contact() -> None:
    gel = choose_instruction(corr(t=(20, 0, 0)), 0.3, 0.1, P)
    assert (gel.id, gel.confidence, gel.magnitude, gel.unit) == ("more_gel", 0.9, 0.0, "")
    press = choose_instruction(corr(t=(20, 0, 0)), 0.3, 0.15, P)  # exactly contact_none: some contact
    assert (press.id, press.confidence) == ("press", 0.85)
    assert choose_instruction(corr(t=(20, 0, 0)), 0.3, 0.5, P).id == "slide_head"  # exactly contact_min


def test_a_good_view_at_exactly_good_quality_holds_with_the_quality_as_confidence() -> None:
    i = choose_instruction(corr(t=(20, 0, 0)), 0.8, 1.0, P)
    assert (i.id, i.confidence) == ("hold_still", 0.8)
    scan = choose_instruction(Correction(), 0.3, 1.0, P)
    assert (scan.id, scan.confidence, scan.magnitude, scan.unit) == ("scan", 0.0, 0.0, "")


@pytest.mark.parametrize(("sigma", "confidence"), [(2.0, 1.0), (5.0, 1.0), (10.0, 0.5), (6.0, 0.833)])
def test_confidence_is_five_over_sigma_capped_at_one(sigma: float, confidence: float) -> None:
    assert choose_instruction(corr(t=(20, 0, 0), sigma=sigma), 0.3, 1.0, P).confidence == confidence
    assert choose_instruction(corr(t=(1, 0, 0), sigma=sigma), 0.3, 1.0, P).confidence == confidence  # hold


def test_confidence_uses_the_better_known_uncertainty() -> None:
    c = Correction((20.0, 0.0, 0.0), ZERO3, math.inf, 10.0)
    assert choose_instruction(c, 0.3, 1.0, P).confidence == 0.5


def test_units_and_rounding_of_each_action() -> None:
    slide = choose_instruction(corr(t=(12.345, 0, 0)), 0.3, 1.0, P)
    assert (slide.magnitude, slide.unit) == (12.3, "mm")
    press = choose_instruction(corr(t=(0, 0, 9.0)), 0.3, 1.0, P)
    assert (press.id, press.magnitude, press.unit) == ("press", 9.0, "mm")
    for r, action in (((0, 0, -10), "rotate_cw"), ((10, 0, 0), "tilt"), ((0, 10, 0), "rock")):
        i = choose_instruction(corr(r=r), 0.3, 1.0, P)
        assert i.id.startswith(action) and (i.magnitude, i.unit) == (10.0, "deg"), i


def test_the_largest_correction_in_tolerances_wins_not_the_largest_number() -> None:
    params = GuidanceParams(tolerance_mm=2.0, tolerance_deg=4.0)
    # 5 mm is 2.5 tolerances; 8° is 2: slide, although 8 > 5
    assert choose_instruction(corr(t=(5, 0, 0), r=(0, 0, 8)), 0.3, 1.0, params).id == "slide_head"


def test_exactly_one_tolerance_is_worth_an_instruction() -> None:
    assert choose_instruction(corr(t=(4.0, 0, 0)), 0.3, 1.0, P).id == "slide_head"
    assert choose_instruction(corr(t=(6.0, 0, 0)), 0.3, 1.0, P).magnitude == 6.0
    held = choose_instruction(corr(t=(3.9, 0, 0), sigma=10.0), 0.3, 1.0, P)
    assert (held.id, held.confidence) == ("hold_still", 0.5)


def test_the_shown_action_keeps_winning_by_the_stickiness_factor() -> None:
    c = corr(t=(12, 0, 0), r=(0, 0, 10))  # slide 3 tolerances, rotate 2.5
    assert choose_instruction(c, 0.3, 1.0, P).id == "slide_head"
    assert choose_instruction(c, 0.3, 1.0, P, current="rotate_ccw").id == "rotate_ccw"  # 2.5·1.3 > 3
    far = corr(t=(14, 0, 0), r=(0, 0, 10))  # 3.5 > 3.25: the slide takes over
    assert choose_instruction(far, 0.3, 1.0, P, current="rotate_ccw").id == "slide_head"


def test_words_to_motion_for_press_rotate_tilt_and_rock() -> None:
    def motion(t=(0.0, 0.0, 0.0), r=(0.0, 0.0, 0.0)):  # type: ignore[no-untyped-def]
        return instruction_to_motion(choose_instruction(corr(t=t, r=r), 0.3, 1.0, P))

    press = motion(t=(0, 0, 9))
    assert press.translation_mm == (0.0, 0.0, 9.0)
    assert press.rotation_deg == ZERO3
    cw = motion(r=(0, 0, -10))
    assert cw.translation_mm == ZERO3 and cw.rotation_deg == (0.0, 0.0, -10.0)
    ccw = motion(r=(0, 0, 10))
    assert ccw.rotation_deg == (0.0, 0.0, 10.0)
    for r in ((10, 0, 0), (-10, 0, 0), (0, 10, 0), (0, -10, 0)):
        m = motion(r=r)
        assert m.translation_mm == ZERO3 and m.rotation_deg == pytest.approx(r), r
    slide = motion(t=(0, -12, 0))
    assert slide.translation_mm == pytest.approx((0.0, -12.0, 0.0)) and slide.rotation_deg == ZERO3


def test_words_to_motion_under_a_tracked_orientation() -> None:
    tilted = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # probe y along patient z
    for r in ((0, 10, 0), (0, -10, 0)):
        i = choose_instruction(corr(r=r), 0.3, 1.0, P, patient_from_probe=np.eye(3))
        assert instruction_to_motion(i).rotation_deg == pytest.approx(r)
    i = choose_instruction(corr(t=(12, 0, 0)), 0.3, 1.0, P, patient_from_probe=tilted)
    assert instruction_to_motion(i).translation_mm == pytest.approx((12.0, 0.0, 0.0))


def test_the_model_correction_uncertainty_grows_as_confidence_falls() -> None:
    assert model_correction((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.5) == Correction(
        (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 10.0, 10.0
    )
    assert model_correction((1.0, 2.0, 3.0), ZERO3, 2.0) == Correction((1.0, 2.0, 3.0), ZERO3, 5.0, 5.0)
    assert not model_correction((1.0, 2.0, 3.0), ZERO3, 0.0).known
    assert model_correction((1.0, 0.0, 0.0), ZERO3, 1e-3).sigma_mm == pytest.approx(5000.0)


def test_masking_keeps_the_uncertainty_and_fusion_narrows_it() -> None:
    c = Correction((3.0, 20.0, 1.0), (30.0, 2.0, 40.0), 2.0, 7.0)
    masked = mask_axes(c, frozenset({"dy"}))
    assert (masked.sigma_mm, masked.sigma_deg, masked.translation_mm) == (2.0, 7.0, (3.0, 0.0, 1.0))
    fused = fuse_corrections(
        Correction((4.0, 8.0, 12.0), ZERO3, 2.0, 2.0), Correction(ZERO3, ZERO3, 2.0, 2.0)
    )
    assert fused.translation_mm == pytest.approx((2.0, 4.0, 6.0))
    assert fused.sigma_mm == pytest.approx(math.sqrt(2.0))  # two equal sigmas: sigma / √2


def test_unreliable_axes_are_masked_from_exactly_near_visible() -> None:
    assert gated_unreliable(frozenset({"dy"}), 0.5, 0.5) == {"dy"}
    assert gated_unreliable(frozenset({"dy"}), 0.49, 0.5) == frozenset()


# --- naming a direction, at its edges (written from the mutation report: docs/testing.md) -----------
# Default hold: patient x (left) = −probe y, patient y (head) = probe x. So a probe-frame slide
# (dx, dy) is the patient vector (left −dy, head dx).


def test_the_nearest_direction_wins_the_diagonal_goes_to_head_and_feet() -> None:
    head = choose_instruction(corr(t=(10.0, -10.0, 0)), 0.3, 1.0, P)  # exactly diagonal: head-feet first
    assert (head.id, head.magnitude) == ("slide_head", round(math.hypot(10, 10), 1))
    left = choose_instruction(corr(t=(3.0, -10.0, 0)), 0.3, 1.0, P)
    assert (left.id, left.magnitude) == ("slide_left", round(math.hypot(3, 10), 1))  # the whole length
    up = choose_instruction(corr(t=(10.0, 3.0, 0)), 0.3, 1.0, P)
    assert (up.id, up.magnitude) == ("slide_head", round(math.hypot(3, 10), 1))


def test_the_shown_direction_keeps_winning_near_the_diagonal_by_the_stickiness() -> None:
    near = corr(t=(10.0, -11.0, 0))  # left 11, head 10: left, unless head is shown (10·1.3 ≥ 11)
    assert choose_instruction(near, 0.3, 1.0, P).id == "slide_left"
    kept = choose_instruction(near, 0.3, 1.0, P, current="slide_head")
    assert (kept.id, kept.magnitude) == ("slide_head", round(math.hypot(10, 11), 1))  # the whole length
    assert choose_instruction(corr(t=(1.0, -20.0, 0)), 0.3, 1.0, P, current="slide_head").id == "slide_left"
    assert choose_instruction(corr(t=(-10.0, -11.0, 0)), 0.3, 1.0, P, current="slide_head").id == "slide_left"
    exact = GuidanceParams(stickiness=1.5)  # head 10 · 1.5 = left 15: a tie keeps what is shown
    assert (
        choose_instruction(corr(t=(10.0, -15.0, 0)), 0.3, 1.0, exact, current="slide_head").id == "slide_head"
    )
    fine = GuidanceParams(tolerance_mm=0.5)  # a sub-millimetre slide, still sticky
    assert choose_instruction(corr(t=(0.8, -0.9, 0)), 0.3, 1.0, fine, current="slide_head").id == "slide_head"


def test_press_rotate_tilt_and_rock_are_scored_in_tolerances_too() -> None:
    for r in ((10, 0, 0), (0, 10, 0)):  # 2.5 tolerances: the 5-tolerance slide comes first
        assert choose_instruction(corr(t=(20.0, 0, 0), r=r), 0.3, 1.0, P).id == "slide_head"
    assert choose_instruction(corr(t=(20.0, 0, 9.0)), 0.3, 1.0, P).id == "slide_head"
    fine = GuidanceParams(tolerance_mm=0.25, tolerance_deg=0.5)
    assert (
        choose_instruction(corr(t=(0, 0, -3.0)), 0.3, 1.0, fine).id == "hold_still"
    )  # pulling away: no press
    press = choose_instruction(corr(t=(0, 0, 0.5)), 0.3, 1.0, fine)
    assert (press.id, press.magnitude) == ("press", 0.5)
    ccw = choose_instruction(corr(r=(0, 0, 0.8)), 0.3, 1.0, fine)
    assert (ccw.id, ccw.magnitude) == ("rotate_ccw", 0.8)


SIDE_60 = np.array(  # the probe rolled 60° about its marker axis (patient +y): its beam leans to the left
    [
        [0.0, -np.cos(np.radians(60)), np.sin(np.radians(60))],
        [1.0, 0.0, 0.0],
        [0.0, np.sin(np.radians(60)), np.cos(np.radians(60))],
    ]
)


def test_a_tracked_orientation_names_slides_from_the_skin_plane_only() -> None:
    # probe +y now points half across the patient (x −0.5) and into the body (z 0.87): a slide along
    # probe y is a slide toward the patient's right, shorter on the skin; the beam axis adds nothing
    slide = choose_instruction(corr(t=(0.0, 12.0, 0.0)), 0.3, 1.0, P, patient_from_probe=SIDE_60)
    assert (slide.id, slide.magnitude, slide.basis) == ("slide_right", 6.0, "camera")
    motion = instruction_to_motion(slide)
    assert np.hypot(*motion.translation_mm[:2]) == pytest.approx(6.0) and motion.translation_mm[2] == 0.0
    assert motion.translation_mm[1] > 0  # back along probe +y, as named
    for r in ((10, 0, 0), (-10, 0, 0), (0, 10, 0), (0, -10, 0)):
        i = choose_instruction(corr(r=r), 0.3, 1.0, P, patient_from_probe=SIDE_60)
        assert instruction_to_motion(i).rotation_deg == pytest.approx(r), (r, i.id)


def test_the_uncertainty_of_an_unknown_correction_keeps_the_values() -> None:
    assert model_correction((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.0) == Correction(
        (1.0, 2.0, 3.0), (4.0, 5.0, 6.0)
    )
    assert model_correction((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), -1.0).translation_mm == (1.0, 2.0, 3.0)


def test_within_tolerance_is_every_component_at_or_inside_both() -> None:
    assert within_tolerance((4.0, -4.0, 0.0), (0.0, 4.0, -4.0), 4.0, 4.0)
    assert not within_tolerance((4.1, 0.0, 0.0), (0.0, 0.0, 0.0), 4.0, 4.0)
    assert not within_tolerance((0.0, 0.0, 0.0), (0.0, 0.0, -4.1), 4.0, 4.0)
    assert not within_tolerance((0.0, 0.0, 5.0), (9.0, 0.0, 0.0), 4.0, 10.0)


def test_sliding_is_searched_too_only_below_search_visible() -> None:
    assert search_axes(frozenset({"dy"}), 0.3, 0.3) == ["dy"]  # exactly search_visible: in view
    assert search_axes(frozenset({"dy"}), 0.29, 0.3) == ["dx", "dy"]
    assert search_axes(frozenset(), 0.0, 0.3) == []


def _about(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def test_words_to_motion_under_any_tilted_orientation_keep_the_length_on_the_skin() -> None:
    default = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pitched = default @ _about(1, 60.0)  # the beam leans toward the head
    for r in ((0, 10, 0), (0, -10, 0), (10, 0, 0), (-10, 0, 0)):
        i = choose_instruction(corr(r=r), 0.3, 1.0, P, patient_from_probe=pitched)
        assert instruction_to_motion(i).rotation_deg == pytest.approx(r), (r, i.id)
    askew = _about(2, 30.0) @ SIDE_60  # and turned on the skin: every direction has probe x and y parts
    for t in ((12.0, 0.0, 0.0), (0.0, 12.0, 0.0), (-9.0, 7.0, 0.0)):
        i = choose_instruction(corr(t=t), 0.3, 1.0, P, patient_from_probe=askew)
        m = instruction_to_motion(i).translation_mm
        assert np.hypot(m[0], m[1]) == pytest.approx(i.magnitude) and m[2] == 0.0, (t, i)
        assert np.dot(m[:2], t[:2]) > 0  # roughly back along the asked slide


def test_hold_still_has_hysteresis_on_quality_and_on_the_correction() -> None:
    # Entering: quality at good_quality (0.8) or the correction within tolerance (4 mm / 4°).
    assert choose_instruction(corr(t=(20, 0, 0)), 0.79, 1.0, P, current="slide_head").id == "slide_head"
    assert choose_instruction(corr(t=(4.5, 0, 0)), 0.3, 1.0, P, current="rotate_cw").id == "slide_head"
    # Once shown it stays down to 0.75 and up to 1.2 tolerances (4.8 mm, 4.8°): tremor at a threshold
    # must not flip the words ...
    held = "hold_still"
    assert choose_instruction(corr(t=(20, 0, 0)), 0.76, 1.0, P, current=held).id == held
    assert choose_instruction(corr(t=(4.7, 0, 0)), 0.3, 1.0, P, current=held).id == held
    assert choose_instruction(corr(r=(0, 0, -4.7)), 0.3, 1.0, P, current=held).id == held
    # ... and goes beyond them.
    assert choose_instruction(corr(t=(20, 0, 0)), 0.74, 1.0, P, current=held).id == "slide_head"
    assert choose_instruction(corr(t=(4.9, 0, 0)), 0.3, 1.0, P, current=held).id == "slide_head"
    assert choose_instruction(corr(r=(0, 0, -4.9)), 0.3, 1.0, P, current=held).id == "rotate_cw"
    # Contact problems are never held off.
    assert choose_instruction(corr(), 0.9, 0.1, P, current=held).id == "more_gel"
