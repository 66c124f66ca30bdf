"""A small closed loop in the camera arm: the real pipeline with the shipped INT8 model, the target
belief fed by the measured tracker model, and the simulated novice following the published words."""

from __future__ import annotations

import pytest

from service.tools.evaluate.episode import EpisodeSpec, run_episode
from service.tools.evaluate.runner import load_model


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    m, choice = load_model()
    assert choice.kind == "onnx", choice.reason
    return m


@pytest.mark.timeout(600)  # four simulated episodes: past the default 120 s on a loaded 2-core machine
def test_camera_arm_brings_the_novice_to_the_view(model) -> None:  # type: ignore[no-untyped-def]
    """Four episodes (the guided arm without the camera reaches 0-1 of such starts): at least three
    reach the view within the 60 s limit. The whole figure is `sonoguide eval`'s, not a test's."""
    results = [
        run_episode(EpisodeSpec.draw(seed), "camera", lambda: model, 0.3, hold_s=0.0)
        for seed in (200000, 200001, 200005, 200006)
    ]
    reached = [r for r in results if r.success]
    assert len(reached) >= 3, [(r.seed, r.final_distance_mm, r.final_angle_deg) for r in results]
    assert all(r.time_to_plane_s is not None and r.time_to_plane_s <= 60.0 for r in reached)


def test_camera_arm_words_are_named_from_the_tracked_pose(model) -> None:  # type: ignore[no-untyped-def]
    """While the tracker has the probe the belief guides (basis "belief"); in its dropouts (a hand or
    the handle hides a marker: ~18% of frames, measured) the image alone does, in the default hold."""
    from service.daemon.pipeline import Pipeline

    seen: list[str] = []
    original = Pipeline.guide

    def spy(self, work):  # type: ignore[no-untyped-def]
        message = original(self, work)
        seen.append(message["basis"])
        return message

    Pipeline.guide = spy  # type: ignore[method-assign]
    try:
        run_episode(EpisodeSpec.draw(200001), "camera", lambda: model, 0.3, limit_s=3.0, hold_s=0.0)
    finally:
        Pipeline.guide = original  # type: ignore[method-assign]
    assert seen and seen.count("belief") >= 0.5 * len(seen), seen
    assert set(seen) <= {"belief", "assumed_marker_toward_head"}, seen
