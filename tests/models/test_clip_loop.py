"""The clip head judged on closed-loop windows: its weights read back from the shipped file compute
what ONNX Runtime computes, windows split by phantom, and the report on real recorded episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.clip_head import Windows
from models.clip_loop import head_weights_from_onnx, load_windows, loop_report, split_by_phantom
from service.tools.evaluate.loop_windows import FIELDS, record, save

SHIPPED = Path(__file__).resolve().parents[2] / "models/sonoguide-view/1.5.0"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parts = [record(seed, "camera", limit_s=3.0) for seed in (5010, 5011, 5012)]
    path = tmp_path_factory.mktemp("loop") / "windows.npz"
    save({k: np.concatenate([p[k] for p in parts]) for k in FIELDS}, path)
    return path


@pytest.mark.timeout(300)
def test_weights_read_back_compute_what_the_shipped_head_computes(recorded: Path) -> None:
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    weights = head_weights_from_onnx(SHIPPED / manifest["clip"]["file"])
    w = load_windows(recorded)
    session = ort.InferenceSession(
        str(SHIPPED / manifest["clip"]["file"]), providers=["CPUExecutionProvider"]
    )
    from models.clip_head import forward

    scale = np.asarray(manifest["clip"]["sd_scale"])
    mean, sd = forward(weights, w.features[:20], w.motion[:20], scale)
    for i in range(20):
        corr, spread = session.run(None, {"features": w.features[i : i + 1], "motion": w.motion[i : i + 1]})
        np.testing.assert_allclose(mean[i], corr[0], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(sd[i], spread[0], rtol=1e-3, atol=1e-3)


@pytest.mark.timeout(300)
def test_the_report_and_the_split_by_phantom(recorded: Path) -> None:
    w = load_windows(recorded)
    rest, held = split_by_phantom(w, 0.34)
    assert set(np.unique(held.group)) == {5012} and set(np.unique(rest.group)) == {5010, 5011}
    assert len(rest.truth) + len(held.truth) == len(w.truth)
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    weights = head_weights_from_onnx(SHIPPED / manifest["clip"]["file"])
    r = loop_report(weights, np.asarray(manifest["clip"]["sd_scale"]), w)
    assert r["windows"] == int((w.contact > 0.5).sum())
    assert all(0.0 <= v <= 1.0 for v in r["coverage_68"].values())
    # a spread a thousand times wider holds every truth; one a thousand times narrower almost none
    wide = loop_report(weights, np.full(6, 1e3), w)["coverage_68"]
    narrow = loop_report(weights, np.full(6, 1e-3), w)["coverage_68"]
    assert min(wide.values()) == 1.0 and max(narrow.values()) < 0.05


def test_a_file_that_is_not_a_clip_head_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a clip head"):
        head_weights_from_onnx(SHIPPED / "model.int8.onnx")
    one = Windows(*(np.zeros((3, 1)) for _ in range(6)), np.array([7, 7, 7]))
    with pytest.raises(ValueError, match="two or more"):
        split_by_phantom(one, 0.5)
