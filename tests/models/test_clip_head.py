"""The clip head's ONNX graph and the model folder it ships in, on the real shipped frame model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.clip_head import (
    CLIP_FILE,
    FEATURE_OUTPUT,
    PAST_S,
    TOL,
    forward,
    head_onnx,
    with_feature_output,
    write_candidate,
)
from models.evaluate import run_onnx_inputs
from tests.clip_models import FRAME_MODEL, D, K, make_candidate, random_weights


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_head_graph_computes_what_the_numpy_head_does() -> None:
    weights, scale = random_weights(), np.array([1.5, 1.2, 1.0, 1.1, 0.9, 1.4])
    sess = session(head_onnx(weights, scale, K))
    rng = np.random.default_rng(1)
    for _ in range(5):
        f = rng.normal(0, 1, (1, K, D)).astype(np.float32)
        m = rng.normal(0, 1, (1, K - 1, 7)).astype(np.float32)
        corr, sd = sess.run(["correction", "sd"], {"features": f, "motion": m})
        want_corr, want_sd = forward(weights, f, m, scale)
        np.testing.assert_allclose(corr, want_corr, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sd, want_sd, rtol=1e-4)
        assert np.all(sd > 0)


def test_the_spread_is_bounded_and_scaled_per_axis() -> None:
    weights = random_weights()
    weights["out_b"][6:] = [-50, 50, 0, 0, 0, 0]  # log sd far outside the trained range
    scale = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 1.0])
    weights["out_w"][:] = 0.0
    _, sd = forward(weights, np.zeros((1, K, D), np.float32), np.zeros((1, K - 1, 7), np.float32), scale)
    np.testing.assert_allclose(sd[0, :3], [np.exp(-4) * TOL[0], np.exp(4) * TOL[1], 2.0 * TOL[2]], rtol=1e-5)


def test_the_feature_output_leaves_every_other_output_as_it_was(tmp_path: Path) -> None:
    src = FRAME_MODEL / "model.int8.onnx"
    dst = tmp_path / "model.int8.onnx"
    with_feature_output(src, dst)
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 255, (3, 128, 128)).astype(np.uint8)
    depth, freq = np.full(3, 120.0, np.float32), np.full(3, 3.5, np.float32)
    before, after = run_onnx_inputs(src, grey, depth, freq), run_onnx_inputs(dst, grey, depth, freq)
    assert set(after) == set(before) | {FEATURE_OUTPUT}
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)
    assert after[FEATURE_OUTPUT].shape == (3, D) and np.all(after[FEATURE_OUTPUT] >= 0)  # after a ReLU


def test_a_candidate_folder_lists_every_file_with_its_hash_and_the_clip_contract(tmp_path: Path) -> None:
    head = tmp_path / CLIP_FILE
    onnx.save(head_onnx(random_weights(), np.ones(6), K), str(head))
    figures = {"sign_visible": {}, "coverage_68": {}, "sign_largest_hidden": 0.7, "windows": 1}
    results = {
        "past_s": list(PAST_S),
        "train_phantoms": 4,
        **dict.fromkeys(("tracked", "untracked", "still", "frame_model"), figures),
    }
    out = tmp_path / "candidate"
    write_candidate(FRAME_MODEL, out, head, results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == "1.4.0+clip"
    assert CLIP_FILE in manifest["files"] and "model.int8.onnx" in manifest["files"]
    assert (
        manifest["clip"]["past_s"] == list(PAST_S) and manifest["clip"]["features_output"] == FEATURE_OUTPUT
    )
    assert FEATURE_OUTPUT in [o["name"] for o in manifest["outputs"]]
    assert manifest["guidance"] == json.loads((FRAME_MODEL / "manifest.json").read_text())["guidance"]


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    return make_candidate(tmp_path, {"dx": 0.9, "dy": 0.7, "rx": 0.6})


def test_the_service_loads_a_clip_model_and_reads_a_window_through_its_head(candidate: Path) -> None:
    from service.daemon.onnx_model import OnnxModel
    from service.policy.search import unreliable_axes

    model = OnnxModel(candidate, providers=("cpu",))
    assert model.clip_contract is not None and model.clip_contract.past_s == PAST_S
    grey = np.random.default_rng(3).integers(0, 255, (200, 160)).astype(np.uint8)
    out = model.predict(grey, 40.0, 120.0, 3.5)
    assert out.features is not None and out.features.shape == (D,)
    f = np.repeat(out.features[None, None], K, axis=1)
    corr, sd = model.clip_correction(f, np.zeros((1, K - 1, 7), np.float32))
    want_corr, want_sd = forward(random_weights(), f, np.zeros((1, K - 1, 7), np.float32), np.ones(6))
    np.testing.assert_allclose(corr, want_corr[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(sd, want_sd[0], rtol=1e-3)
    # The axes the clip head signs poorly without the camera are searched, not the frame model's.
    assert unreliable_axes(model.manifest) == frozenset({"rx"})


def test_a_clip_manifest_that_names_a_missing_output_or_an_unlisted_head_is_refused(candidate: Path) -> None:
    from service.daemon.onnx_model import ModelLoadError, OnnxModel

    path = candidate / "manifest.json"
    good = json.loads(path.read_text())
    for broken, words in (
        (
            {**good, "clip": {**good["clip"], "features_output": "nope"}},
            "'nope', which the model does not declare",
        ),
        ({**good, "clip": {**good["clip"], "file": "other.onnx"}}, "clip head file must be listed"),
        (
            {**good, "clip": {k: v for k, v in good["clip"].items() if k != "past_s"}},
            "clip section is incomplete",
        ),
        ({**good, "clip": {**good["clip"], "match_s": -1}}, "non-positive"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(ModelLoadError, match=words):
            OnnxModel(candidate, providers=("cpu",))


def test_a_still_image_is_read_as_a_clip_of_itself_with_the_motion_unknown(candidate: Path) -> None:
    from service.daemon.onnx_model import OnnxModel

    grey = np.random.default_rng(4).integers(0, 255, (200, 160)).astype(np.uint8)
    model = OnnxModel(candidate, providers=("cpu",))
    framewise, still = model.predict(grey, 40.0, 120.0, 3.5), model.predict_still(grey, 40.0, 120.0, 3.5)
    f = np.repeat(np.asarray(framewise.features, np.float32)[None, None], K, axis=1)
    want_corr, want_sd = forward(random_weights(), f, np.zeros((1, K - 1, 7), np.float32), np.ones(6))
    np.testing.assert_allclose(still.correction_mm + still.correction_deg, want_corr[0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(still.correction_sd, want_sd[0], rtol=1e-3)
    assert still.features is None and still.gain_error_db == framewise.gain_error_db
    # A frame model has no history to stand in for: a still image is its one frame.
    frame_only = OnnxModel(FRAME_MODEL, providers=("cpu",))
    assert frame_only.predict_still(grey, 40.0, 120.0, 3.5) == frame_only.predict(grey, 40.0, 120.0, 3.5)
