"""The shipped model: manifest integrity, a real ONNX Runtime session through service.daemon.onnx_model, a fresh
held-out evaluation against the manifest's numbers, INT8 vs FP32, and tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.dataset import EVAL_SEEDS, TRAIN_SEEDS, generate
from models.evaluate import AXES, TOL_DEG, TOL_MM, VISIBLE_MIN, metrics, run_onnx
from models.real_images import real_image_checks
from service.daemon.onnx_model import ModelLoadError, OnnxModel, load_model, sha256_file, shipped_model_dir
from service.seams import ModelOutput
from sim.phantom import make_phantom
from sim.scanner import Scanner
from sim.truth import ground_truth
from tests.clip_models import FRAME_MODEL

MODEL_DIR = shipped_model_dir()
MANIFEST = json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return load_model("", threads=1)


def test_manifest_describes_the_shipped_files() -> None:
    for name, digest in MANIFEST["files"].items():
        assert sha256_file(MODEL_DIR / name) == digest, name
    assert MANIFEST["model_file"] == "model.int8.onnx" and MANIFEST["precision"] == "int8"
    assert (MODEL_DIR / MANIFEST["model_file"]).stat().st_size < 5 * 1024 * 1024
    assert MANIFEST["opset"] >= 17
    assert [i["name"] for i in MANIFEST["inputs"]] == ["image", "scalars"]
    assert {o["name"]: o["unit"] for o in MANIFEST["outputs"]}["correction_deg"] == "deg"
    training = MANIFEST["training"]
    # Training and held-out phantoms never share a seed.
    assert training["train_seeds"][1] <= TRAIN_SEEDS[1] < EVAL_SEEDS[0] <= training["eval_seeds"][0]
    assert "MODEL_CARD.md" in MANIFEST["files"]
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "not a diagnostic device" in card and "Real scanner images: four" in card


def test_int8_graph_is_quantized_and_static() -> None:
    import onnx

    graph = onnx.load(str(MODEL_DIR / "model.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 5  # QDQ format
    weights = {t.name: t for t in graph.initializer}
    int8_weights = [t for t in weights.values() if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 6
    # Per-channel: the conv weight scales are vectors, one per output channel.
    dq_scales = [
        weights[n.input[1]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in int8_weights}
    ]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in dq_scales)


def test_model_loads_verifies_and_predicts_typed_outputs(model: OnnxModel) -> None:
    assert model.provider == "CPUExecutionProvider"
    assert (model.name, model.version) == (MANIFEST["name"], MANIFEST["version"])
    ph = make_phantom("abdomen", EVAL_SEEDS[0] + 7)
    settings = ph.preset.default
    gt = ground_truth(ph, ph.target_pose, settings)
    image = Scanner(ph, (300, 220)).render(ph.target_pose, settings)  # any size: resized per the manifest
    out = model.predict(image, settings.gain_db, settings.depth_mm, settings.freq_mhz)
    assert isinstance(out, ModelOutput)
    assert all(isinstance(v, float) for v in (*out.correction_mm, *out.correction_deg, out.quality))
    assert out.contact > 0.5 and out.target_visible > 0.4
    assert abs(out.gain_error_db - gt.gain_error_db) < 4.0
    assert 0.6 * gt.best_depth_mm < out.best_depth_mm < 1.5 * gt.best_depth_mm
    with pytest.raises(ValueError, match="grey"):
        model.predict(np.zeros((4, 4, 4, 4), np.uint8), 30.0, 100.0, 3.5)
    with pytest.raises(ValueError, match="positive"):
        model.predict(image, 30.0, 0.0, 3.5)


@pytest.fixture(scope="module")
def fresh_held_out():
    # Held-out seeds the manifest's evaluation did not use (it used the start of the range).
    return generate(range(EVAL_SEEDS[0] + 50000, EVAL_SEEDS[0] + 50060), per_phantom=3, size=128, workers=1)


def _three_sigma(p: float, n: int) -> float:
    """Three binomial standard errors of a share ``p`` measured on ``n`` frames (plus one frame)."""
    return 3.0 * float(np.sqrt(p * (1.0 - p) / n)) + 1.0 / n


def test_fresh_held_out_evaluation_agrees_with_manifest(fresh_held_out) -> None:
    """The manifest's figures and the acceptance goals, recomputed on phantoms the build never saw:
    each fresh figure must agree with the recorded one, and meet its goal, within three standard
    errors of the fresh sample (a model that regressed, or a manifest that overstates, fails)."""
    ev = MANIFEST["evaluation"]
    goals, shipped = ev["goals"], ev["int8"]
    pred = run_onnx(MODEL_DIR / "model.int8.onnx", fresh_held_out)
    fresh = metrics(fresh_held_out, pred)
    contact = fresh_held_out.contact > 0.5
    gain_abs = np.abs(pred["gain_error_db"] - fresh_held_out.gain_error_db)[contact]
    gain_3se = 3.0 * float(gain_abs.std(ddof=1)) / np.sqrt(len(gain_abs))
    assert abs(fresh["gain_mae_db"] - shipped["gain_mae_db"]) <= gain_3se, (fresh["gain_mae_db"], gain_3se)
    assert fresh["gain_mae_db"] - gain_3se <= goals["gain_mae_db"]
    n_contact, n_visible = fresh["contact_frames"], fresh["visible_frames"]
    assert n_contact >= 100 and n_visible >= 80  # enough frames for the bounds below to mean something
    for key, n in (("depth_within_one_step", n_contact), ("direction_correct", n_visible)):
        bound = _three_sigma(shipped[key], n)
        assert abs(fresh[key] - shipped[key]) <= bound, (key, fresh[key], shipped[key], bound)
        assert fresh[key] + bound >= goals[key], (key, fresh[key], goals[key])
    # The per-axis sign figures decide which axes the guidance searches (service.policy.search). Each
    # axis is judged on the frames (as for direction_correct) whose true component is beyond tolerance.
    f = fresh_held_out
    true6 = np.concatenate([f.correction_mm / TOL_MM, f.correction_deg / TOL_DEG], axis=1)
    judged = (f.target_visible >= VISIBLE_MIN) & contact & (np.max(np.abs(true6), axis=1) >= 1.0)
    for k, axis in enumerate(AXES):
        recorded = shipped["direction_sign_by_axis"][axis]
        n = int((judged & (np.abs(true6[:, k]) >= 1.0)).sum())
        got, bound = fresh["direction_sign_by_axis"][axis], _three_sigma(recorded, max(n, 1))
        assert n >= 20 and abs(got - recorded) <= bound, (axis, got, recorded, n, bound)
    assert fresh["contact_accuracy"] >= 0.9


def test_real_image_numbers_in_the_manifest_and_card_are_the_shipped_models() -> None:
    """The card's claims about real scanner images were measured on these very files."""
    recorded = MANIFEST["evaluation"]["real_images"]
    now = real_image_checks(MODEL_DIR / MANIFEST["model_file"])
    assert set(now["tissue"]) == set(recorded["tissue"]) and set(now["air"]) == set(recorded["air"])
    for group in ("tissue", "air"):
        for name, row in now[group].items():
            assert np.allclose(
                row["contact_probability"], recorded[group][name]["contact_probability"], atol=0.01
            )
            if group == "tissue":
                assert np.allclose(row["gain_error_db"], recorded[group][name]["gain_error_db"], atol=0.2)
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    air = next(iter(recorded["air"].values()))
    assert " / ".join(f"{p:.2f}" for p in air["contact_probability"]) in card


def test_int8_matches_fp32_on_the_same_frames(fresh_held_out) -> None:
    q = metrics(fresh_held_out, run_onnx(MODEL_DIR / "model.int8.onnx", fresh_held_out))
    f = metrics(fresh_held_out, run_onnx(MODEL_DIR / "reference.fp32.onnx", fresh_held_out))
    assert abs(q["gain_mae_db"] - f["gain_mae_db"]) <= 0.25
    for key in ("depth_within_one_step", "direction_correct", "contact_accuracy"):
        assert abs(q[key] - f[key]) <= 0.03, (
            key
        )  # per-frame flips on ~100 frames; the manifest has the full set


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "sonoguide-view" / MANIFEST["version"]
    shutil.copytree(MODEL_DIR, dst)
    return dst


def test_tampered_or_missing_file_is_refused(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    assert OnnxModel(folder, ("cpu",)).provider == "CPUExecutionProvider"
    data = bytearray((folder / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.int8\.onnx does not match its sha256"):
        OnnxModel(folder, ("cpu",))
    (folder / "MODEL_CARD.md").unlink()
    with pytest.raises(ModelLoadError, match=r"MODEL_CARD\.md listed in the manifest is missing"):
        OnnxModel(folder, ("cpu",))
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        OnnxModel(folder, ("cpu",))
    with pytest.raises(ModelLoadError, match="unknown execution providers"):
        OnnxModel(_copy(tmp_path / "b"), ("npu",))


def test_manifest_with_wrong_units_is_refused(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["outputs"][0]["unit"] = "percent"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"gain_error_db.*'dB'"):
        OnnxModel(folder, ("cpu",))


def _cuda_runs() -> bool:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False
        sess = ort.InferenceSession(str(MODEL_DIR / "model.int8.onnx"), providers=["CUDAExecutionProvider"])
        return sess.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_runs(), reason="CUDAExecutionProvider cannot run here (no GPU)")
def test_cuda_provider_is_used_when_a_gpu_exists(tmp_path: Path) -> None:
    m = OnnxModel(MODEL_DIR, ("cuda", "cpu"), engine_cache=tmp_path / "trt")
    assert m.provider == "CUDAExecutionProvider"
    out = m.predict(np.full((128, 128), 90, np.uint8), 30.0, 100.0, 3.5)
    assert np.isfinite(out.gain_error_db)


def test_daemon_load_path_and_bench_numbers(tmp_path: Path) -> None:
    from service.commands.run import load_model as daemon_load
    from service.daemon.config import Config, ModelConfig
    from service.daemon.onnx_model import bench_precisions

    cfg = Config(model=ModelConfig(dir="", providers=("cuda", "cpu"), engine_cache=str(tmp_path / "trt")))
    m = daemon_load(cfg)
    assert isinstance(m, OnnxModel) and m.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    bench = bench_precisions("", runs=40)
    clip = "clip" in json.loads((shipped_model_dir() / "manifest.json").read_text())
    assert set(bench) == {"int8", "fp32"} | ({"clip_head"} if clip else set())
    assert all(0 < v["median_ms"] <= v["p90_ms"] for v in bench.values())
    assert set(bench_precisions(FRAME_MODEL, runs=20)) == {"int8", "fp32"}  # a single-frame model


def test_manifest_reader_names_each_problem(tmp_path: Path) -> None:
    from service.daemon.onnx_model import read_manifest

    with pytest.raises(ModelLoadError, match=r"manifest\.json is missing: not a model folder"):
        read_manifest(tmp_path)
    folder = _copy(tmp_path)
    good = json.loads((folder / "manifest.json").read_text())

    def refused(manifest: dict) -> str:
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelLoadError) as e:
            read_manifest(folder)
        return str(e.value)

    assert refused({k: v for k, v in good.items() if k != "outputs"}).endswith("lacks the key 'outputs'")
    unlisted = {**good, "files": {k: v for k, v in good["files"].items() if k != good["model_file"]}}
    assert refused(unlisted).endswith(
        f"'files' must list the model file {good['model_file']!r} with its sha256"
    )
    assert "'files' must list" in refused({**good, "files": [good["model_file"]]})  # not a table
    digest = {**good, "files": {**good["files"], "MODEL_CARD.md": "0" * 64}}
    assert refused(digest).endswith("(damaged or changed); reinstall the model version")
    units = {**good, "outputs": [dict(o, unit="%") if o["name"] == "contact" else o for o in good["outputs"]]}
    expected = next(o["unit"] for o in good["outputs"] if o["name"] == "contact")
    assert refused(units).endswith(f"output 'contact' must be declared in {expected!r}, got '%'")
    (folder / "manifest.json").write_text(json.dumps(good))
    assert read_manifest(folder)["version"] == good["version"]
