"""The whole benchmark: the daemon at 30 fps (latency, CPU, memory, cold start), a rate ramp
(``max_fps``), the model on one thread (INT8 vs FP32), the simulator and the link alone."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.benchmark.procs import DaemonProcess, Subscriber, start_emulator, stop_process, write_config
from service.benchmark.stats import frame_loss, latencies_ms, summarize_latency, sustained

log = logging.getLogger(__name__)

GOALS = {
    "latency_p99_ms": ("<=", 8.0),
    "max_fps": (">=", 120.0),
    "cpu_core_fraction_at_30fps": ("<=", 0.25),
    "rss_mb": ("<=", 250.0),
    "cold_start_s": ("<=", 3.0),
}


def measure_rate(
    broker_port: int, workdir: Path, fps: float, seconds: float, warmup_s: float = 0.7
) -> dict[str, Any]:
    """Emulator at ``fps`` → daemon → broker → subscriber for ``seconds`` after a warm-up."""
    emulator, pty = start_emulator(fps)
    subscriber = Subscriber(broker_port)
    daemon = None
    try:
        daemon = DaemonProcess(write_config(workdir, pty, broker_port), workdir)
        cold = daemon.wait_ready()
        time.sleep(warmup_s)
        subscriber.take()
        c0, w0 = daemon.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        c1, w1 = daemon.cpu_seconds(), time.monotonic()
        rss = daemon.rss_mb()
        got = subscriber.take()
    finally:
        if daemon is not None:
            daemon.stop()
        subscriber.close()
        stop_process(emulator)
    wall = w1 - w0
    ids = [int(m["frame_id"]) for _, m in got]
    delivered = len(got) / wall
    loss = frame_loss(ids)
    span = (max(ids) - min(ids) + 1) if ids else 0
    return {
        "target_fps": fps,
        "source_fps": round(span / wall, 2),  # what the emulator actually produced (frame ids seen)
        "delivered_fps": round(delivered, 2),
        "frame_loss": round(loss, 4),
        "sustained": sustained(fps, delivered, loss),
        "latency_ms": summarize_latency(latencies_ms(got)),
        "cpu_core_fraction": round((c1 - c0) / wall, 4),
        "rss_mb": round(rss, 1),
        "cold_start_s": round(cold, 3),
    }


def shipped_onnx_files(root: Path | None = None) -> tuple[Path | None, Path | None, str]:
    """(INT8 model, FP32 reference, why not) of the newest shipped model folder."""
    root = root or Path(__file__).resolve().parents[2] / "models"
    manifests = sorted(root.glob("*/*/manifest.json"))
    if not manifests:
        return None, None, f"no shipped model under {root} (models/<name>/<version>/manifest.json)"
    folder = manifests[-1].parent
    int8 = next(iter(sorted(folder.glob("*int8*.onnx"))), None)
    fp32 = next(iter(sorted(folder.glob("*fp32*.onnx"))), None)
    missing = [n for n, p in (("INT8", int8), ("FP32", fp32)) if p is None]
    return int8, fp32, f"{folder} has no {' and no '.join(missing)} .onnx file" if missing else ""


def onnx_latency_ms(path: Path, runs: int) -> float:
    """Median ms of one inference, batch 1, one intra-op thread, CPU, random inputs of the model's shapes."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = np.uint8 if "uint8" in i.type else np.float32
        feeds[i.name] = rng.uniform(0, 1, shape).astype(dtype)
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def model_speed(runs: int) -> dict[str, Any]:
    int8, fp32, why = shipped_onnx_files()
    if int8 is None or fp32 is None:
        return {"int8_ms": None, "fp32_ms": None, "model_note": why}
    return {
        "int8_ms": round(onnx_latency_ms(int8, runs), 3),
        "fp32_ms": round(onnx_latency_ms(fp32, runs), 3),
        "model_files": [str(int8), str(fp32)],
    }


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "")  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def run_suite(quick: bool) -> dict[str, Any]:
    from firmware_bridge.bench import link_throughput
    from service.localbroker import LocalBroker
    from sim.bench import frames_per_second

    window = 4.0 if quick else 20.0
    ramp = [60.0, 120.0, 240.0] if quick else [60.0, 90.0, 120.0, 180.0, 240.0, 360.0]
    ramp_window = 2.5 if quick else 8.0
    out: dict[str, Any] = {"quick": quick, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="sonoguide-bench-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir=workdir / "broker", name="bench-broker").start()
        try:
            at30 = measure_rate(broker.port, workdir, 30.0, window)
            runs = [at30]
            for fps in ramp:
                r = measure_rate(broker.port, workdir, fps, ramp_window)
                runs.append(r)
                if not r["sustained"]:
                    break  # beyond the first rate that fails only the machine's limits show
        finally:
            broker.close()
    ok = [r["target_fps"] for r in runs if r["sustained"]]
    out.update(
        latency_ms=at30["latency_ms"],
        max_fps=max(ok) if ok else None,
        cpu_core_fraction_at_30fps=at30["cpu_core_fraction"],
        rss_mb=at30["rss_mb"],
        cold_start_s=round(statistics.median(r["cold_start_s"] for r in runs), 3),
        cold_start_all_s=[r["cold_start_s"] for r in runs],
        rates=runs,
    )
    out.update(model_speed(50 if quick else 300))
    out["sim_fps"] = round(frames_per_second(1.5 if quick else 4.0), 1)
    link = link_throughput(seconds=2.0 if quick else 5.0, fps=1000.0)
    out["link_fps"] = link["fps"]
    out["link"] = link
    return out


def goals_report(body: dict[str, Any]) -> dict[str, Any]:
    values = {
        "latency_p99_ms": (body.get("latency_ms") or {}).get("p99"),
        "max_fps": body.get("max_fps"),
        "cpu_core_fraction_at_30fps": body.get("cpu_core_fraction_at_30fps"),
        "rss_mb": body.get("rss_mb"),
        "cold_start_s": body.get("cold_start_s"),
    }
    out: dict[str, Any] = {}
    for key, (op, target) in GOALS.items():
        v = values[key]
        met = None if v is None else (v >= target if op == ">=" else v <= target)
        out[key] = {"value": v, "goal": f"{op} {target:g}", "met": met}
    i8, f32 = body.get("int8_ms"), body.get("fp32_ms")
    out["int8_not_slower"] = {
        "value": [i8, f32], "goal": "int8_ms <= fp32_ms", "met": None if i8 is None or f32 is None else i8 <= f32,
    }  # fmt: skip
    return out


def main(quick: bool = False, json_path: Path | None = None) -> int:
    from service.cmd_eval import write_json

    t0 = time.monotonic()
    try:
        body = run_suite(quick)
    except Exception as e:
        print(f"sonoguide bench: {e}", file=sys.stderr)
        return 1
    body["goals"] = goals_report(body)
    body["wall_s"] = round(time.monotonic() - t0, 1)
    if json_path:
        write_json(json_path, body)
        print(f"written: {json_path}")
    print(json.dumps({k: v for k, v in body.items() if k not in ("rates", "goals", "link")}, indent=2))
    for key, goal in body["goals"].items():
        verdict = {True: "met", False: "NOT met", None: "no figure"}[goal["met"]]
        print(f"goal {key} {goal['goal']}: {goal['value']} -> {verdict}")
    return 0
