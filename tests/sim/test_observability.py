"""sim.observability: what a motion away from the standard view changes in the image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.tools.evaluate.metrics import turned_about_target
from sim import observability as obs
from sim.phantom import make_phantom
from sim.presets import get_preset
from sim.scanner import Scanner
from sim.types import Pose

HELD_OUT = 150003


@given(
    depth=st.floats(5.0, 150.0),
    axis=st.sampled_from([0, 1]),
    deg=st.floats(-30.0, 30.0),
    start=st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(-40, 40)),
)
def test_a_pivot_leaves_the_point_below_the_face_where_it_was(
    depth: float, axis: int, deg: float, start: tuple[float, float, float]
) -> None:
    pose = Pose.from_rotation_vector([1.0, -2.0, 3.0], list(start))
    moved = pose.apply_motion(*obs.pivot_motion(depth, axis, deg))
    below = np.array([0.0, 0.0, depth])
    assert np.allclose(moved.to_points(below[None])[0], pose.to_points(below[None])[0], atol=1e-6)
    if abs(deg) > 1.0:  # and the face itself moved (a turn at the face would keep it)
        assert np.linalg.norm(moved.position_mm - pose.position_mm) > 0.01 * depth * abs(np.radians(deg))


def test_pivot_axis_is_checked() -> None:
    with pytest.raises(ValueError, match="pivot axis"):
        obs.pivot_motion(50.0, 2, 5.0)


@pytest.fixture(scope="module")
def abdomen():
    ph = make_phantom("abdomen", HELD_OUT)
    settings = get_preset("abdomen").default
    sc = Scanner(ph)
    return ph, sc, settings, sc.labels(ph.target_pose, settings)


def test_the_standard_view_changes_nothing_and_scores_full(abdomen) -> None:
    ph, sc, settings, reference = abdomen
    changed, visible, quality = obs.observe(ph, sc, settings, (np.zeros(3), np.zeros(3)), reference)
    assert changed == 0.0 and visible == pytest.approx(1.0, abs=0.01) and quality == pytest.approx(visible)
    assert obs.view_residual(ph, ph.target_pose) == {
        "off_plane_mm": 0.0, "across_mm": 0.0, "depth_mm": 0.0, "angle_deg": 0.0
    }  # fmt: skip


def test_a_tilt_about_the_kidney_keeps_it_in_view_and_changes_little_of_the_image(abdomen) -> None:
    """The simulator's near-null direction: quality falls as if the view were lost, the kidney stays
    cut through its middle, and less of the anatomy changes than for the same tilt at the face."""
    ph, sc, settings, reference = abdomen
    depth = obs.target_depth_mm(ph)
    pivot = obs.observe(ph, sc, settings, obs.pivot_motion(depth, 0, 10.0), reference)
    at_face = obs.observe(ph, sc, settings, (np.zeros(3), np.array([10.0, 0.0, 0.0])), reference)
    slide = obs.observe(ph, sc, settings, (np.array([8.0, 0.0, 0.0]), np.zeros(3)), reference)
    assert pivot[1] >= 0.95 and pivot[2] <= 0.5  # visible, yet scored far from the view
    assert at_face[1] < 0.9  # a tilt at the face swings the plane off the kidney
    assert 0.0 < pivot[0] < 0.5 * at_face[0]
    assert slide[0] > pivot[0]  # an in-plane slide moves the anatomy across the image
    moved = ph.target_pose.apply_motion(*obs.pivot_motion(depth, 0, 10.0))
    view = obs.view_residual(ph, moved)
    assert max(abs(view["off_plane_mm"]), abs(view["across_mm"]), abs(view["depth_mm"])) < 0.5
    assert view["angle_deg"] == pytest.approx(10.0, abs=0.1)
    assert turned_about_target(view)
    swept = obs.view_residual(ph, ph.target_pose.apply_motion([0.0, 6.0, 0.0], [0.0, 0.0, 0.0]))
    assert swept["off_plane_mm"] == pytest.approx(-6.0, abs=0.05) and not turned_about_target(swept)
    assert not turned_about_target({})  # an episode without the record


def test_the_table_covers_every_direction_and_the_cli_checks_its_arguments(capsys) -> None:
    rows = obs.table(["vascular"], [HELD_OUT])
    assert {r["direction"] for r in rows} == set(obs.DIRECTIONS)
    assert len(rows) == sum(len(obs.AMOUNTS[unit]) for unit, _ in obs.DIRECTIONS.values())
    by = {(r["direction"], r["amount"]): r for r in rows}
    # A bigger sweep off the carotid changes more of the image and loses more of the bulb.
    assert by[("sweep dy", 8.0)]["anatomy_changed"] > by[("sweep dy", 2.0)]["anatomy_changed"]
    assert by[("sweep dy", 8.0)]["visible"] < by[("sweep dy", 2.0)]["visible"]
    assert obs.main(["--phantoms", "1", "--presets", "cardiac", "--seed-base", str(HELD_OUT)]) == 0
    out = capsys.readouterr().out
    assert out.count("| cardiac |") == len(rows)
    with pytest.raises(SystemExit) as e:
        obs.main(["--presets", "liver"])
    assert e.value.code == 2
    assert "unknown preset" in capsys.readouterr().err
