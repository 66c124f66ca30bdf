"""The view search's rules (service.policy.search), move by move, on scripted scores.

Decisions are made at whole seconds with ``move_s`` = 1 s and a ``look_s`` of 0.5 s, so each decision
sees only the score given at that second (unless a test adds samples in between); ``better`` is 0.25
so every comparison is exact in binary. Expected moves follow from the documented rule: better → the
same direction again, worse → back with half the step, no signal ``max_blind_moves`` times → back;
an axis is done when its step fell below ``min_fraction``, then the next axis in order.
"""

from __future__ import annotations

import pytest

from service.policy.search import AxisSearch, SearchMove, SearchParams, bounded_step, unreliable_axes

STEPS = (("dy", 8.0), ("rz", 12.0), ("rx", 6.0))


def params(**kw) -> SearchParams:  # type: ignore[no-untyped-def]
    base = dict(steps=STEPS, move_s=1.0, look_s=0.5, better=0.25, min_fraction=0.3, max_blind_moves=3,
                max_excursion_steps=100.0)  # fmt: skip
    return SearchParams(**{**base, **kw})


def decide(search: AxisSearch, scores: list[float], axes=("rx", "dy", "rz")) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    out = []
    for second, score in enumerate(scores):
        move = search.update(score, float(second), list(axes))
        assert move is not None
        out.append((move.axis, move.amount))
    return out


def test_better_keeps_going_worse_turns_back_halved_and_a_settled_axis_hands_over_in_order() -> None:
    scores = [0.0, 1.0, 2.0, 1.0, 1.5, 0.5, 2.5, 1.5, 0.5, 1.5, 0.5, -0.5]
    assert decide(AxisSearch(params()), scores) == [
        ("dy", 8.0), ("dy", 8.0), ("dy", 8.0),  # better, better
        ("dy", -4.0), ("dy", -4.0),  # worse: back, half the step; then better
        ("rz", 12.0),  # worse again: a quarter step is below 0.3 of it, dy is done; rz next
        ("rz", 12.0), ("rz", -6.0),
        ("rx", 6.0),  # rz done; rx next
        ("rx", 6.0), ("rx", -3.0),
        ("dy", 8.0),  # rx done: round again, from dy
    ]  # fmt: skip


def test_no_signal_three_times_turns_back_and_a_change_of_exactly_better_is_no_signal() -> None:
    scores = [0.0, 0.25, 0.5, 0.75, 0.5, 0.5, 0.5]
    assert [a for _, a in decide(AxisSearch(params()), scores)] == [8.0, 8.0, 8.0, -8.0, -8.0, -8.0, 8.0]


def test_the_blind_count_restarts_after_a_signal() -> None:
    after_better = [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [a for _, a in decide(AxisSearch(params()), after_better)] == [8.0, 8.0, 8.0, 8.0, -8.0]
    after_worse = [0.0, -1.0, -1.0, -1.0, -1.0]
    assert [a for _, a in decide(AxisSearch(params()), after_worse)] == [8.0, -4.0, -4.0, -4.0, 4.0]
    next_axis = [0.0, -1.0, -2.0, -2.0, -2.0, -2.0]  # dy settles; rz starts with a fresh count
    assert decide(AxisSearch(params()), next_axis)[2:] == [("rz", 12.0)] * 3 + [("rz", -12.0)]


def test_a_move_is_held_for_move_s_then_judged_on_the_mean_of_its_last_look_s() -> None:
    search = AxisSearch(params())
    first = search.update(0.0, 0.0, ["dy"])
    assert search.update(5.0, 0.5, ["dy"]) is first  # shown for move_s: the same move
    assert search.update(1.0, 0.75, ["dy"]) is first
    # at exactly move_s a new move: the mean of the samples at most look_s old (0.5, 0.75 and 1.0 s)
    # is (5 + 1 - 6) / 3 = 0: no signal, so on the same way
    second = search.update(-6.0, 1.0, ["dy"])
    assert second is not first and (second.axis, second.amount) == ("dy", 8.0)
    search = AxisSearch(params())
    search.update(0.0, 0.0, ["dy"])
    search.update(-0.25, 0.5, ["dy"])  # exactly look_s before the decision: in the mean
    third = search.update(-0.25, 1.0, ["dy"])  # mean -0.25: no signal (a sum would read -0.5: worse)
    assert third.amount == 8.0
    search = AxisSearch(params())
    search.update(0.0, 0.0, ["dy"])
    search.update(1.0, 0.5, ["dy"])
    assert search.update(-0.5, 1.0, ["dy"]).amount == 8.0  # mean 0.25 = better exactly: no signal


def test_samples_older_than_the_last_move_count_when_look_s_is_longer_than_a_move() -> None:
    search = AxisSearch(params(look_s=1.5))
    assert [search.update(s, float(t), ["dy"]).amount for t, s in enumerate([0.0, 1.0, 0.0])] == [
        8.0,
        8.0,
        8.0,
    ]
    # at 2 s the mean is of the samples at 1 s and 2 s: 0.5, as at 1 s: no signal, on the same way


def test_the_search_turns_back_at_its_bound_from_where_it_started() -> None:
    search = AxisSearch(params(max_excursion_steps=2.0))
    amounts = [a for _, a in decide(search, [0.0, 1.0, 2.0, 3.0, 4.0], axes=("dy",))]
    assert amounts == [8.0, 8.0, -8.0, -8.0, -8.0]  # 16 mm out is the bound: back, and it keeps that way


def test_a_small_step_after_a_reversal_keeps_its_direction() -> None:
    search = AxisSearch(params(steps=(("dy", 1.0),), min_fraction=0.1))
    assert [a for _, a in decide(search, [0.0, -1.0, 0.0], axes=("dy",))] == [1.0, -0.5, -0.5]


def test_only_known_axes_are_searched_and_none_means_no_move() -> None:
    search = AxisSearch(params())
    assert search.update(0.0, 0.0, ["dx", "dz"]) is None and search.move is None
    assert search.update(0.0, 1.0, ["dz", "rz"]).axis == "rz"
    assert search.update(0.0, 2.0, []) is None and search.move is None


def test_reset_starts_afresh_on_the_first_axis() -> None:
    search = AxisSearch(params())
    decide(search, [0.0, -1.0, -2.0, 1.0])  # on rz by now
    search.reset()
    assert (search.update(0.0, 10.0, ["rz", "dy"]).axis, search.move.amount) == ("dy", 8.0)


@pytest.mark.parametrize(
    ("axis", "translation", "rotation"),
    [("dx", (5, 0, 0), (0, 0, 0)), ("dy", (0, 5, 0), (0, 0, 0)), ("dz", (0, 0, 5), (0, 0, 0)),
     ("rx", (0, 0, 0), (5, 0, 0)), ("ry", (0, 0, 0), (0, 5, 0)), ("rz", (0, 0, 0), (0, 0, 5))],
)  # fmt: skip
def test_a_move_is_a_probe_frame_correction_on_its_axis(axis: str, translation, rotation) -> None:  # type: ignore[no-untyped-def]
    assert SearchMove(axis, 5.0).correction() == (translation, rotation)


def test_bounded_step_at_and_beyond_the_bound() -> None:
    assert bounded_step(8.0, 8.0, 16.0) == 8.0  # ends exactly at the bound: allowed
    assert bounded_step(8.0, 8.5, 16.0) == -8.5  # half a millimetre beyond: back
    assert bounded_step(-8.0, -8.0, 16.0) == -8.0
    # beyond the bound both ways: always back toward the start, whatever the step's sign
    assert bounded_step(30.0, -5.0, 16.0) == -5.0 and bounded_step(30.0, 5.0, 16.0) == -5.0
    assert bounded_step(-30.0, 5.0, 16.0) == 5.0 and bounded_step(-30.0, -5.0, 16.0) == 5.0


def test_unreliable_axes_fall_back_to_the_fp32_figures() -> None:
    fp32 = {"fp32": {"direction_sign_by_axis": {"dy": 0.5, "dx": 0.9}}}
    assert unreliable_axes({"evaluation": fp32}) == {"dy"}  # no precision named
    assert unreliable_axes({"precision": "int8", "evaluation": fp32}) == {"dy"}  # none for int8
    both = {**fp32, "int8": {"direction_sign_by_axis": {"dy": 0.9, "dx": 0.5}}}
    assert unreliable_axes({"precision": "int8", "evaluation": both}) == {"dx"}
    assert unreliable_axes({"evaluation": {"fp32": {"direction_sign_by_axis": {"zz": 0.1}}}}) == frozenset()
    assert unreliable_axes({"evaluation": fp32}, threshold=0.95) == {"dy", "dx"}


def test_a_step_at_exactly_min_fraction_is_still_searched() -> None:
    search = AxisSearch(params(min_fraction=0.25))
    # worse, worse: the step is a quarter, not below min_fraction: dy goes on; a third time hands over
    assert decide(search, [0.0, -1.0, -2.0, -3.0]) == [("dy", 8.0), ("dy", -4.0), ("dy", 2.0), ("rz", 12.0)]
