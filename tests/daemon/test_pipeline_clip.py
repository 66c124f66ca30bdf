"""A model with a clip head in the pipeline: the service keeps the frames, the head's correction and
spread reach the guidance and the belief, and a swapped model starts a history of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.daemon.clock import SimClock
from service.daemon.onnx_model import OnnxModel, load_model
from service.daemon.pipeline import Pipeline
from service.seams import MemoryPublisher
from tests.clip_models import FRAME_MODEL, make_candidate
from tests.service_bench import SimTimeProbe

FPS = 10.0


def test_the_clip_heads_correction_and_spread_replace_the_frames_and_a_swap_starts_afresh(
    tmp_path: Path,
) -> None:
    model = OnnxModel(make_candidate(tmp_path, {"dy": 0.9}), providers=("cpu",))
    probe, clock, pub = SimTimeProbe(seed=2, initial={"depth_mm": 120.0}), SimClock(), MemoryPublisher()
    pipe = Pipeline(probe, model, pub, clock)
    assert pipe.history is not None and pipe.guidance.params.unreliable_axes == frozenset()
    seen = []
    for _ in range(15):
        frame = probe.frame(clock.now())
        work = pipe.infer(pipe.preprocess(pipe.receive(frame)))
        alone = work.output
        pipe.guide(work)
        seen.append((alone, work.output))
        clock.advance(1 / FPS)
    assert len(pipe.history) == 11  # 1.0 s and the match: the frames the head can still ask for
    for alone, clipped in seen:
        assert alone.correction_sd is None and alone.features is not None
        assert clipped.correction_sd is not None and all(v > 0 for v in clipped.correction_sd)
        assert clipped.features is None  # not carried past the head
        assert (alone.quality, alone.contact, alone.gain_error_db) == (
            clipped.quality,
            clipped.contact,
            clipped.gain_error_db,
        )
    # The head's own reading, not the frame model's (random weights: far from it).
    alone, clipped = seen[-1]
    assert not np.allclose(clipped.correction_mm, alone.correction_mm, atol=1e-3)
    pipe.swap_model(load_model(FRAME_MODEL, config=None))  # a single-frame model: no history at all
    assert pipe.history is None
    work = pipe.infer(pipe.preprocess(pipe.receive(probe.frame(clock.now()))))
    pipe.guide(work)
    assert work.output.correction_sd is None and work.output.features is None
