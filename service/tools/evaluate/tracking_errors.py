"""Measure the project's own camera tracking chain on simulated RealSense frames (issue 14).

Per seed: the phantom (abdomen, vascular, cardiac in turn) and the camera of that seed; the probe
parked away from the stickers for ``CAL_FRAMES`` frames calibrated with the real
:func:`~service.tracking.calibration.calibrate_frames` (as ``sonoguide calibrate-camera`` / the daemon's
``cmd/calibrate_camera`` do); then an unguided novice's search (:func:`sim.camera.default_poses`, 30 fps)
with a hand crossing the line of sight (``sim.camera._occluder_track``, as the recordings have it).
Every frame goes through ``detect_markers`` → ``fit_probe`` → the calibration, and is compared with
the true pose. The daemon's timing is replayed on the measured processing times through the real
``service.tracking.track.interpolate`` (what ``CameraSource.pose_at`` answers).

Error model (the one :mod:`service.tools.evaluate.tracker_model` draws from)::

    observed = B ∘ truth ∘ δ

``B`` is a per-seed rigid error of the patient frame (rotation vector about the patient origin, deg,
and translation, mm, patient frame): the calibration's error plus whatever the tracking keeps
constant over a sequence. It is estimated per sequence as the mean left error. ``δ`` is the per-frame
error: a rotation (rotation vector in the probe frame, deg) about the markers' centroid ``MARKER_CENTROID``
and a displacement of that centroid (patient frame, mm) — the Kabsch fit's errors are nearly
independent in that parametrisation, and the face-centre error follows from them through the lever arm.

``tracker_model.error_stats`` is shared: the same figures are computed from the model's output for ``compare``.

Run: ``python -m service.tools.evaluate.tracking_errors [--seeds 0 1 2] [--seconds 4] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.tools.evaluate.tracker_model import error_stats
from service.tracking import calibration as cal
from service.tracking.markers import Intrinsics, detect_markers
from service.tracking.pose import fit_probe, invert, pose_of
from service.tracking.track import PoseSample, interpolate
from sim.camera import FPS, CameraModel, _occluder_track, default_camera, default_poses, render_camera
from sim.phantom import Phantom, make_phantom
from sim.types import Pose, matrix_to_rotvec

PRESETS = ("abdomen", "vascular", "cardiac")
CAL_FRAMES = 10  # CameraSource.calibrate's default
CAL_FRAME_OFFSET = 100_000  # calibration frames get render noise of their own
DEFAULT_SEEDS = (0, 1, 2, 3, 4, 5)
DEFAULT_SECONDS = 4.0


def parked_pose(phantom_preset: str, seed: int) -> Pose:
    """The probe standing on the skin away from the stickers during calibration (tests/tracking_bench)."""
    return parked_on(make_phantom(phantom_preset, seed))


def parked_on(phantom: Phantom) -> Pose:
    return phantom.pose_on_skin(-100.0, -60.0, rotation_deg=180.0)


def calibrate_parked(phantom: Phantom, cam: CameraModel, seed: int) -> cal.Calibration:
    """The sticker calibration of ``CAL_FRAMES`` rendered frames with the probe parked, as
    ``sonoguide calibrate-camera`` / the daemon's ``cmd/calibrate_camera`` make it."""
    parked = parked_on(phantom)
    frames = (render_camera(phantom, parked, cam, CAL_FRAME_OFFSET + k, seed) for k in range(CAL_FRAMES))
    return cal.calibrate_frames(frames, cam.intrinsics, camera=f"sim seed {seed}")


def chain_pose(
    rgb: np.ndarray, depth: np.ndarray, intr: Intrinsics, calibration: cal.Calibration
) -> Pose | None:
    """One camera frame through the daemon's chain: markers, fit, calibration; None without a fit."""
    markers = detect_markers(rgb, depth, intr)
    fit = fit_probe({name: m.centre_mm for name, m in markers.items()})
    if fit is None:
        return None
    position, quat = pose_of(calibration.T_patient_cam @ fit.T_cam_probe)
    return Pose(position, quat)


@dataclass
class SeedRun:
    """The raw outcome of one seed: per camera frame the truth, the chain's pose (None: no fit) and
    the detect+fit time; the calibration's own error."""

    seed: int
    preset: str
    times: np.ndarray  # s, camera frame times
    truth: list[Pose]
    observed: list[Pose | None]
    occluded: list[bool]
    process_s: np.ndarray  # detect_markers + fit_probe + calibration transform, per frame
    calibration_residual_mm: float
    calibration_rotvec_deg: np.ndarray  # T_est ∘ T_true⁻¹ (patient frame)
    calibration_translation_mm: np.ndarray


def run_seed(seed: int, seconds: float, occlusion: bool = True) -> SeedRun:
    preset = PRESETS[seed % len(PRESETS)]
    phantom = make_phantom(preset, seed)
    cam = default_camera(seed)
    intr = cam.intrinsics
    calibration = calibrate_parked(phantom, cam, seed)
    T_true = np.vstack([np.column_stack([cam.pose.rotation_matrix(), cam.pose.position_mm]), [0, 0, 0, 1]])
    err = calibration.T_patient_cam @ invert(T_true)  # maps true patient coords to the calibrated ones

    n = max(2, round(seconds * FPS))
    poses = default_poses(phantom, seed, n)
    rng = np.random.default_rng([int(seed), 0x0CC])  # as sim.camera.write_recording
    occluders = _occluder_track(cam, poses[0], rng, n) if occlusion else [None] * n
    observed: list[Pose | None] = []
    process = np.zeros(n)
    for i in range(n):
        rgb, depth = render_camera(phantom, poses[i], cam, i, seed, occluders[i])
        t0 = time.perf_counter()
        observed.append(chain_pose(rgb, depth, intr, calibration))
        process[i] = time.perf_counter() - t0
    return SeedRun(
        seed, preset, np.arange(n) / FPS, poses, observed, [o is not None for o in occluders], process,
        calibration.residual_mm, matrix_to_rotvec(err[:3, :3]), err[:3, 3].copy(),
    )  # fmt: skip


# --- the daemon's timing -----------------------------------------------------------------------------


QUERY_DELAY_S = 0.003  # probe frame host time -> Pipeline.guide's pose_at call (docs/benchmarks.md, p50)


def _truth_at(run: SeedRun, t: float) -> Pose:
    n = len(run.times)
    k = min(int(t * FPS), n - 1)
    s = t * FPS - k
    a, b = run.truth[k], run.truth[min(k + 1, n - 1)]
    q = a.quat_wxyz + s * (b.quat_wxyz - a.quat_wxyz)  # nlerp: neighbours are < 1° apart
    return Pose(a.position_mm + s * (b.position_mm - a.position_mm), q)


def pose_at_replay(
    run: SeedRun, rng: np.random.Generator, query_delay_s: float = QUERY_DELAY_S
) -> dict[str, Any]:
    """Replay ``CameraSource.pose_at`` on the run: camera frame k, stamped at k/30 s, enters the track
    when its detect+fit is done (k/30 + its measured time); a probe frame at a uniformly random host
    time t queries the track for t at t + ``query_delay_s`` (when ``Pipeline.guide`` runs). Returns the
    pose ages (``CameraPose.age_s``), the answers (None: no pose) with the truth at t, and the true
    velocity there (for the effective lag)."""
    n = len(run.times)
    ready = run.times + run.process_s
    samples = [
        PoseSample(float(run.times[k]), o.position_mm.copy(), o.quat_wxyz.copy()) if o is not None else None
        for k, o in enumerate(run.observed)
    ]
    ages: list[float] = []
    answers: list[Pose | None] = []
    truths: list[Pose] = []
    velocity: list[np.ndarray] = []
    queries = run.times[1:] + rng.uniform(0, 1.0 / FPS, n - 1)
    queries = queries[queries < run.times[-1]]
    for tq in queries:
        avail = [s for k, s in enumerate(samples) if s is not None and ready[k] <= tq + query_delay_s][-12:]
        got = interpolate(avail, float(tq))
        truths.append(_truth_at(run, float(tq)))
        velocity.append(
            (_truth_at(run, float(tq) + 0.01).position_mm - _truth_at(run, float(tq) - 0.01).position_mm)
            / 0.02
        )
        if got is None:
            answers.append(None)
        else:
            ages.append(got.age_s)
            answers.append(Pose(got.position_mm, got.quat_wxyz))
    return {"ages_s": np.array(ages), "truth": truths, "answers": answers, "velocity": velocity}


def effective_lag_s(replays: Sequence[dict[str, Any]]) -> float:
    """The lag L that best explains the answers' position errors as ``-L × true velocity`` (least
    squares): what is left of the pose age once pose_at has extrapolated across it."""
    num = den = 0.0
    for p in replays:
        for truth, got, v in zip(p["truth"], p["answers"], p["velocity"], strict=True):
            if got is not None:
                num -= float((got.position_mm - truth.position_mm) @ v)
                den += float(v @ v)
    return num / den if den > 0 else 0.0


# --- the whole measurement ---------------------------------------------------------------------------


def measure_tracking_chain(
    seeds: Sequence[int] = DEFAULT_SEEDS, seconds_per_seed: float = DEFAULT_SECONDS, occlusion: bool = True
) -> dict[str, Any]:
    """Run the chain on every seed; the figures (see the module docstring) as a JSON-able dict."""
    started = time.perf_counter()
    runs, failed = [], {}
    for seed in seeds:
        try:
            runs.append(run_seed(int(seed), seconds_per_seed, occlusion))
        except cal.CalibrationError as e:  # reported, not hidden
            failed[int(seed)] = str(e)
    frames = error_stats([(r.truth, r.observed) for r in runs])
    rng = np.random.default_rng(0x7A7)
    replays = [pose_at_replay(r, rng) for r in runs]
    ages = np.concatenate([p["ages_s"] for p in replays]) if replays else np.zeros(0)
    daemon = error_stats([(p["truth"], p["answers"]) for p in replays])
    speed = [float(np.linalg.norm(v)) for p in replays for v in p["velocity"]]
    process = np.concatenate([r.process_s for r in runs]) if runs else np.zeros(0)
    occ = [(o is None, c) for r in runs for o, c in zip(r.observed, r.occluded, strict=True)]
    return {
        "seeds": [int(s) for s in seeds],
        "seconds_per_seed": seconds_per_seed,
        "failed_seeds": failed,
        "per_seed": [
            {
                "seed": r.seed,
                "preset": r.preset,
                "frames": len(r.times),
                "no_pose_frames": sum(o is None for o in r.observed),
                "occluded_frames": sum(r.occluded),
                "calibration_residual_mm": round(r.calibration_residual_mm, 3),
                "calibration_rotvec_deg": np.round(r.calibration_rotvec_deg, 4).tolist(),
                "calibration_translation_mm": np.round(r.calibration_translation_mm, 3).tolist(),
            }
            for r in runs
        ],
        "frame_level": _jsonable(frames),
        "pose_at_level": _jsonable(daemon),
        "no_pose_when_occluded": sum(m for m, c in occ if c) / max(1, sum(c for _, c in occ)),
        "no_pose_when_clear": sum(m for m, c in occ if not c) / max(1, sum(not c for _, c in occ)),
        "process_ms_median": float(np.median(process) * 1e3) if len(process) else None,
        "process_ms_p90": float(np.percentile(process, 90) * 1e3) if len(process) else None,
        "pose_age_ms_median": float(np.median(ages) * 1e3) if len(ages) else None,
        "pose_age_ms_p90": float(np.percentile(ages, 90) * 1e3) if len(ages) else None,
        "pose_age_ms_mean": float(np.mean(ages) * 1e3) if len(ages) else None,
        "pose_at_effective_lag_ms": effective_lag_s(replays) * 1e3,
        "probe_speed_mm_s_median": float(np.median(speed)) if speed else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return round(float(x), 4)
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m service.tools.evaluate.tracking_errors", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    ap.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per seed (default %(default)s)")
    ap.add_argument("--no-occlusion", action="store_true", help="no hand crossing the line of sight")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    result = measure_tracking_chain(args.seeds, args.seconds, occlusion=not args.no_occlusion)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if not result["failed_seeds"] else 1


if __name__ == "__main__":
    sys.exit(main())
