"""The view search for directions the model cannot judge: which axes, and the line search itself."""

from __future__ import annotations

from service.policy.guidance import (
    Correction,
    GuidanceEngine,
    GuidanceParams,
    gated_unreliable,
    mask_axes,
    search_axes,
)
from service.policy.search import AxisSearch, SearchParams, bounded_step, unreliable_axes

MANIFEST = {
    "precision": "int8",
    "evaluation": {
        "int8": {
            "direction_sign_by_axis": {"dx": 0.80, "dy": 0.32, "dz": 0.70, "rx": 0.21, "ry": 0.96, "rz": 0.51}
        }
    },
}


def test_unreliable_axes_come_from_the_manifest() -> None:
    assert unreliable_axes(MANIFEST) == {"dy", "rx", "rz"}
    assert unreliable_axes(None) == frozenset() and unreliable_axes({"evaluation": {}}) == frozenset()


def test_masked_axes_are_not_followed() -> None:
    c = mask_axes(Correction((3.0, 20.0, 1.0), (30.0, 2.0, 40.0), 1.0, 1.0), frozenset({"dy", "rx", "rz"}))
    assert c.translation_mm == (3.0, 0.0, 1.0) and c.rotation_deg == (0.0, 2.0, 0.0)
    assert search_axes(frozenset({"dy"}), visible=0.1, search_visible=0.3) == ["dx", "dy"]
    assert search_axes(frozenset({"dy"}), visible=0.9, search_visible=0.3) == ["dy"]
    assert search_axes(frozenset(), visible=0.0, search_visible=0.3) == []


def _climb(peak: float, start: float, seconds: float = 40.0, max_steps: float = 2.0) -> float:
    """A 1-D plant: the probe at x, score = peak-shaped; the user does each move at once."""
    search = AxisSearch(SearchParams(steps=(("dy", 8.0),), max_excursion_steps=max_steps))
    x, shown = start, None
    for i in range(int(seconds * 10)):
        now = i / 10
        move = search.update(max(0.0, 1.0 - abs(x - peak) / 40.0), now, ["dy"])
        if move is not shown:  # a new move: carried out once
            shown = move
            x += move.amount if move else 0.0
    return x


def test_search_climbs_to_the_peak_from_either_side() -> None:
    for start in (-14.0, 12.0):  # within the search's bound (2 steps of 8 mm)
        assert abs(_climb(0.0, start)) <= 8.0, start
    for start in (-30.0, 25.0):  # farther: only with a wider bound
        assert abs(_climb(0.0, start, max_steps=5.0)) <= 8.0, start
        assert abs(_climb(0.0, start)) > 8.0, start


def test_engine_searches_only_when_the_followed_axes_are_done() -> None:
    engine = GuidanceEngine(GuidanceParams(unreliable_axes=frozenset({"dy", "rx", "rz"})))
    far = Correction((30.0, 0.0, 0.0), (0.0, 0.0, 0.0), 5.0, 5.0)
    shown, _ = engine.update(far, 0.2, 1.0, 0.0, visible=0.8)
    assert shown.id.startswith("slide_") and shown.magnitude == 30.0  # a reliable axis: followed
    engine = GuidanceEngine(GuidanceParams(unreliable_axes=frozenset({"dy", "rx", "rz"})))
    sweep_only = Correction((0.0, 25.0, 0.0), (40.0, 0.0, 0.0), 5.0, 5.0)  # coins: not followed
    ids = {engine.update(sweep_only, 0.2, 1.0, i / 10, visible=0.8)[0].id for i in range(30)}
    assert ids & {"slide_left", "slide_right"} and "tilt_head" not in ids  # a search move, not the coin
    oracle = GuidanceEngine(GuidanceParams())  # nothing unreliable: follows every axis, never searches
    assert oracle.update(sweep_only, 0.2, 1.0, 0.0, visible=0.8)[0].id.startswith("tilt_")


def test_bounded_step_turns_back_at_the_excursion_limit() -> None:
    assert bounded_step(0.0, 8.0, 16.0) == 8.0
    assert bounded_step(16.0, 8.0, 16.0) == -8.0  # would end 24 away: back toward the start
    assert bounded_step(-16.0, -8.0, 16.0) == 8.0
    assert bounded_step(30.0, 40.0, 16.0) == -40.0  # beyond already: always back toward the start


def test_search_on_noise_stays_within_its_bound() -> None:
    """No view signal at all (flat score): the asked-for motion never strays beyond the bound."""
    search = AxisSearch(SearchParams(steps=(("dy", 8.0),), max_excursion_steps=2.0))
    x, shown, worst = 0.0, None, 0.0
    for i in range(600):
        move = search.update(0.1, i / 10, ["dy"])
        if move is not shown:
            shown = move
            x += move.amount if move else 0.0
            worst = max(worst, abs(x))
    assert 8.0 <= worst <= 16.0


def test_unreliable_axes_are_followed_while_the_target_is_out_of_view() -> None:
    unreliable = frozenset({"dy", "rx", "rz"})
    assert gated_unreliable(unreliable, visible=0.8, near_visible=0.5) == unreliable
    assert gated_unreliable(unreliable, visible=0.2, near_visible=0.5) == frozenset()
    engine = GuidanceEngine(GuidanceParams(unreliable_axes=unreliable))
    sweep = Correction((0.0, 25.0, 0.0), (0.0, 0.0, 0.0), 5.0, 5.0)
    shown, _ = engine.update(sweep, 0.05, 1.0, 0.0, visible=0.1)  # far: the model's guess is followed
    assert shown.id == "slide_right" and shown.magnitude == 25.0
