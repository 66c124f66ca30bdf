"""Closed-loop evaluation and benchmarks: scoring math, the simulated probe, real episodes on
simulated time, the eval CLI end to end, and one short run of the real benchmark processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from service.daemon.inference import HeuristicModel
from service.policy.guidance import GuidanceEngine, instruction_to_motion, model_correction
from service.tools.benchmark import stats
from service.tools.evaluate import metrics
from service.tools.evaluate.episode import EpisodeSpec, Reader, instruction_from_message, run_episode
from service.tools.evaluate.simdevice import OracleModel, ParameterRefusedError, SimProbe
from sim.phantom import make_phantom
from sim.presets import PRESETS
from sim.truth import ground_truth, pose_error
from tests.cli import run_sonoguide

REPO = Path(__file__).resolve().parents[2]
SEED = 200005  # vascular (seed % 3 == 2): the cheapest preset to render


def _result(arm: str, t: float | None, seed: int = 1, **kw: object) -> metrics.EpisodeResult:
    base = dict(
        seed=seed, preset="abdomen", arm=arm, noise=0.3, success=t is not None, time_to_plane_s=t,
        frames=10, start_distance_mm=50.0, start_angle_deg=30.0, start_gain_error_db=10.0,
        start_depth_mm=80.0, depth_ok_at_end=True, gain_converged_frame=4,
    )  # fmt: skip
    base.update(kw)
    return metrics.EpisodeResult(**base)  # type: ignore[arg-type]


def test_censored_quantiles_count_failures_as_never() -> None:
    assert metrics.censored_quantile([10.0, 20.0, None, 30.0], 0.5) == 20.0
    assert metrics.censored_quantile([10.0, None, None, None], 0.5) is None  # most never got there
    assert metrics.censored_quantile([5.0, 1.0, 3.0], 0.9) == 5.0
    assert metrics.success_curve([1.0, None, 3.0, 3.0], [0.5, 1.0, 2.9, 3.0, 60.0]) == [
        0,
        0.25,
        0.25,
        0.75,
        0.75,
    ]


def test_flicker_leaves_out_only_the_words_catching_up_with_the_arrival() -> None:
    arrive = ["slide_head", "slide_head", "hold_still", "good_view", "hold_still"]
    assert metrics.count_changes(arrive) == 1 and metrics.flicker_changes(arrive, 6) == 0
    # Too late to be the arrival's lag (after 6 frames), or not to "hold still": it counts.
    assert metrics.flicker_changes(["slide_head"] * 8 + ["hold_still"], 6) == 1
    assert metrics.flicker_changes(["slide_head", "rotate_cw", "hold_still"], 6) == 2
    # Only the first change can be the arrival; changes after it count.
    assert metrics.flicker_changes(["slide_head", "hold_still", "slide_head", "hold_still"], 6) == 2
    assert metrics.flicker_changes(["hold_still", "slide_head", "hold_still"], 6) == 2
    assert metrics.flicker_changes([], 6) == 0


def test_flicker_counts_changes_and_good_view_is_hold_still() -> None:
    assert metrics.count_changes(["hold_still", "good_view", "good_view", "hold_still"]) == 0
    assert metrics.count_changes(["slide_head", "slide_head", "rotate_cw", "slide_head", "hold_still"]) == 3
    assert metrics.first_converged([12.0, 7.0, 2.5, 4.0]) == 2


def test_aggregate_has_the_issue_keys_and_lower_bound_speedup() -> None:
    rs = [_result("guided", 10.0, 1, hold_changes=1, hold_s=4.0), _result("guided", 14.0, 2, hold_s=4.0)]
    rs += [_result("unguided", None, 1), _result("unguided", 50.0, 2)]
    rs += [_result("oracle", 8.0, 1, gain_converged_frame=None), _result("oracle", 9.0, 2)]
    out = metrics.aggregate(rs)
    for key in ("success_rate", "median_time_to_plane_s", "p90_time_to_plane_s", "unguided_success_rate",
                "oracle_success_rate", "gain_converged_rate", "depth_ok_rate", "flicker_per_s"):  # fmt: skip
        assert key in out
    assert out["success_rate"] == 1.0 and out["unguided_success_rate"] == 0.5
    assert out["median_time_to_plane_s"] == 10.0 and out["p90_time_to_plane_s"] == 14.0
    assert out["flicker_per_s"] == 0.125
    assert out["oracle_gain_converged_rate"] == 0.5
    assert out["unguided_median_time_to_plane_s"] == 50.0
    assert out["speedup_vs_unguided"] == 5.0 and not out["speedup_is_lower_bound"]


def test_capture_figures_count_episodes_captured_at_the_view_and_captures_elsewhere() -> None:
    rs = [
        _result("camera", 10.0, 1, captured_at_view=True),
        _result("camera", 12.0, 2, captured_at_view=False, captures_off_view=2),
        _result("camera", None, 3, captures_off_view=1),
        _result("camera", None, 4),
    ]
    out = metrics.aggregate(rs)
    assert out["camera_capture_rate"] == 0.25 and out["camera_off_view_captures"] == 3
    assert out["capture_rate"] is None and out["off_view_captures"] is None  # no guided episodes


def test_sim_probe_applies_the_probe_rules_and_reads_back() -> None:
    preset = PRESETS["abdomen"]
    probe = SimProbe(preset, preset.default)
    assert probe.set_param("gain_db", 33.4) == 33.0 and probe.settings.gain_db == 33.0
    assert probe.set_param("depth_mm", 120.0) == 120.0 and probe.settings.depth_mm == 120.0
    with pytest.raises(ParameterRefusedError, match="not one of"):
        probe.set_param("depth_mm", 150.0)
    with pytest.raises(ParameterRefusedError, match="out of range"):
        probe.set_param("gain_db", 99.0)
    assert probe.settings.gain_db == 33.0  # a refused change leaves the setting alone


def test_message_back_to_motion_matches_the_instruction() -> None:
    engine = GuidanceEngine()
    shown, _ = engine.update(model_correction((0.0, 12.0, 0.0), (0.0, 0.0, 0.0), 1.0), 0.2, 1.0, 0.0)
    message = {"instruction": shown.id, "magnitude": shown.magnitude, "unit": shown.unit,
               "confidence": shown.confidence, "basis": shown.basis}  # fmt: skip
    a, b = instruction_to_motion(shown), instruction_to_motion(instruction_from_message(message))
    assert a is not None and b is not None
    np.testing.assert_allclose(a.translation_mm, b.translation_mm)
    reader = Reader(reread_s=1.0)
    first = reader.read(message, 0.0)
    assert reader.read({**message, "magnitude": 5.0}, 0.5) is first  # the number is re-read later
    assert reader.read({**message, "magnitude": 5.0}, 1.0) is not first


def test_oracle_episode_reaches_the_plane_and_success_holds_there() -> None:
    spec = EpisodeSpec.draw(SEED)
    ph = make_phantom(spec.preset, SEED)
    d0, a0 = pose_error(spec.start_pose, ph.target_pose)
    assert 30.0 <= d0 <= 80.0 and 20.0 <= a0 <= 60.0
    gt0 = ground_truth(ph, spec.start_pose, spec.start_settings)
    assert 5.0 - 1e-6 <= abs(gt0.gain_error_db) <= 20.0 + 1e-6
    r = run_episode(
        spec,
        "oracle",
        HeuristicModel,
        noise=0.0,
        fps=10.0,
        limit_s=40.0,
        hold_s=1.0,
        capture_s=0.0,
        phantom=ph,
    )
    assert r.success and r.time_to_plane_s is not None and r.time_to_plane_s < 40.0
    t, dist, angle = r.trajectory[-1]
    assert metrics.at_plane(dist, angle) and t == pytest.approx(r.time_to_plane_s)
    assert r.trajectory[0][1] == pytest.approx(d0, abs=0.01)
    assert r.depth_ok_at_end and r.auto_changes >= 1  # the controllers moved the simulated probe
    assert r.gain_curve[0] == pytest.approx(gt0.gain_error_db, abs=0.01)


def test_oracle_episode_captures_the_view_once_the_novice_follows_on() -> None:
    """After the hold the novice follows the words again, as a clinician does until the display
    says "captured": with perfect perception the automatic capture is taken, and at the plane."""
    spec = EpisodeSpec.draw(200000)
    r = run_episode(spec, "oracle", HeuristicModel, noise=0.3, fps=10.0, limit_s=40.0, hold_s=1.0)
    assert r.success and r.captured_at_view and r.captures_off_view == 0
    assert len(r.captures) == 1 and metrics.at_plane(*r.captures[0][1:])  # (t, mm, deg)
    assert r.time_to_plane_s is not None and r.captures[0][0] >= r.time_to_plane_s  # once there


def test_unguided_episode_stops_at_the_time_limit() -> None:
    spec = EpisodeSpec.draw(SEED)
    r = run_episode(spec, "unguided", HeuristicModel, noise=0.3, fps=10.0, limit_s=1.5)
    assert not r.success and r.time_to_plane_s is None and r.frames == 15 and r.hold_s == 0.0


def test_oracle_model_speaks_ground_truth() -> None:
    ph = make_phantom("vascular", SEED)
    oracle = OracleModel(ph)
    oracle.pose = ph.target_pose.apply_motion([6.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    out = oracle.predict(np.zeros((8, 8), np.uint8), 26.0, 40.0, 10.0)
    assert out.correction_mm[0] == pytest.approx(-6.0, abs=0.05) and out.confidence == 1.0


def _run_cli(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return run_sonoguide(*args, timeout=timeout)


def test_eval_cli_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = _run_cli("eval", "--episodes", "1", "--seed-base", str(SEED), "--limit-s", "2", "--fps", "5",
                    "--workers", "1", "--json", str(out), "--plots", str(tmp_path / "plots"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    body = json.loads(out.read_text())
    for key in ("success_rate", "median_time_to_plane_s", "p90_time_to_plane_s", "unguided_success_rate",
                "oracle_success_rate", "gain_converged_rate", "depth_ok_rate", "flicker_per_s", "episodes"):  # fmt: skip
        assert key in body
    assert {e["arm"] for e in body["episodes"]} == {"guided", "camera", "unguided", "oracle"}
    assert "camera_success_rate" in body and "camera_success_rate" in body["goals"]
    # The shipped ONNX model, not the placeholder it falls back to when the model cannot load.
    assert body["episodes"][0]["seed"] == SEED and body["model"] == "sonoguide-view", body.get("model_note")
    for name in ("success_vs_time", "trajectories", "gain_convergence"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_eval_cli_refuses_training_seeds(tmp_path: Path) -> None:
    proc = _run_cli("eval", "--episodes", "3", "--seed-base", "9998", "--json", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "overlap" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_eval_cli_runs_a_candidate_model_folder_and_refuses_one_that_does_not_load(tmp_path: Path) -> None:
    from tests.clip_models import make_candidate

    candidate = make_candidate(tmp_path, {"dy": 0.5})
    out = tmp_path / "eval.json"
    proc = _run_cli("eval", "--episodes", "1", "--seed-base", str(SEED), "--limit-s", "2", "--fps", "5",
                    "--workers", "1", "--arms", "guided", "--model", str(candidate), "--json", str(out),
                    "--plots", str(tmp_path / "plots"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    body = json.loads(out.read_text())
    assert body["model_version"] == "1.4.0+clip" and body["model_dir"] == str(candidate)
    (candidate / "clip_head.onnx").write_bytes(b"not a model")
    proc = _run_cli("eval", "--episodes", "1", "--seed-base", str(SEED), "--model", str(candidate),
                    "--json", str(tmp_path / "x.json"))  # fmt: skip
    assert proc.returncode == 2 and "clip_head.onnx" in proc.stderr and "sha256" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_proc_parsing_and_latency_arithmetic() -> None:
    stat = Path("/proc/self/stat").read_text()
    assert stats.cpu_seconds_from_stat(stat, os.sysconf("SC_CLK_TCK")) >= 0.0
    assert stats.cpu_seconds_from_stat("42 (a b) c) S " + " ".join(["0"] * 10) + " 250 150 0", 100) == 4.0
    assert 1.0 < stats.rss_mb_from_status(Path("/proc/self/status").read_text()) < 10000.0
    got = [(10.004, {"t": {"received": 10.0}}), (10.010, {"t": {"received": 10.002}}), (11.0, {"t": {}})]
    assert stats.latencies_ms(got) == pytest.approx([4.0, 8.0])
    assert stats.percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0 and stats.percentile([], 99) is None
    assert stats.frame_loss([1, 2, 4, 5]) == pytest.approx(0.2)
    assert stats.rate_verdict(30.0, 29.0, 0.0, 0.5) == "sustained"
    assert stats.rate_verdict(120.0, 100.0, 0.0, 0.5) == "input_short"


def test_bench_measures_the_real_processes(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.tools.benchmark.suite import measure_rate

    r = measure_rate(broker.port, tmp_path, 30.0, 1.5, warmup_s=0.3)
    # Whether 30 fps is sustained is a figure for `sonoguide bench` on a quiet machine, not for a test
    # on a shared one (one frame lost in 45 already fails "sustained"); the test holds the bench to
    # measuring real frames end to end and to judging its own numbers consistently.
    assert r["verdict"] == stats.rate_verdict(
        30.0, r["source_fps"], r["frame_loss"], r["backlog_growth_ms"]
    ), r
    assert r["sustained"] == (r["verdict"] == "sustained")
    # real frames came through (never more than were sent); how many per second is not asserted
    assert 0.0 < r["delivered_fps"] <= 1.05 * r["source_fps"] and 0.0 <= r["frame_loss"] < 1.0, r
    lat = r["latency_ms"]
    assert lat["n"] >= 1 and 0.0 < lat["p50"] <= lat["p99"]
    assert 0.0 < r["cold_start_s"] < 30.0 and 10.0 < r["rss_mb"] < 2000.0
    assert 0.0 < r["cpu_core_fraction"] < 2.0
