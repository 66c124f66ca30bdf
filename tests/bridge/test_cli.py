"""The probe CLI and the emulator as processes, the way firmware teams use them (`python -m service ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli import run_sonoguide

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


sonoguide = run_sonoguide


@pytest.fixture
def emulator() -> Iterator[Callable[..., str]]:
    """``emulator(*flags)`` starts ``probe-emulator --pty FLAGS`` and returns the path from its first line."""
    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "probe-emulator", "--pty", *flags],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/"), f"first stdout line should be the pty path, got {path!r}"
        return path

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


def test_conformance_passes_against_the_emulator_over_a_pty(emulator) -> None:
    path = emulator()
    r = sonoguide("probe", "conformance", path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("PASS ") for line in lines)
    assert "8/8 checks passed" in r.stderr


@pytest.mark.parametrize(
    ("flags", "check", "reason"),
    [
        (["--misbehave", "accept-out-of-range"], "parameters-out-of-range", "accepted"),
        (["--misbehave", "no-heartbeat"], "heartbeat", "0 heartbeat(s)"),
        (["--drop-chunk-rate", "0.2"], "frames", "lost"),
    ],
)
def test_conformance_fails_with_a_clear_reason(emulator, flags: list[str], check: str, reason: str) -> None:
    r = sonoguide("probe", "conformance", emulator(*flags), "--json")
    assert r.returncode == 1
    results = {c["name"]: c for c in json.loads(r.stdout)}
    assert not results[check]["passed"] and reason in results[check]["detail"], results[check]
    assert results["identify"]["passed"]


def test_stream_reports_rate_and_no_drops_at_default_30_fps(emulator) -> None:
    r = sonoguide("probe", "stream", emulator(), "--seconds", "5", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # the rate and the set-param latency are reported; how fast they are is `sonoguide bench`'s
    assert report["fps"] > 0 and report["dropped_frames"] == 0 and report["crc_errors"] == 0
    assert report["set_param_round_trips"] >= 5 and report["set_param_latency_ms_median"] > 0


def test_info_get_set_record_replay(emulator, tmp_path: Path) -> None:
    path = emulator("--fps", "20")
    info = json.loads(sonoguide("probe", "info", path, "--json").stdout)
    assert info["protocol"] == "1.0" and info["capabilities"]["fps"] == 20.0
    assert sonoguide("probe", "set", path, "gain_db", "63.3").stdout.strip() == "63.5"
    assert sonoguide("probe", "get", path, "gain_db").stdout.strip() == "63.5"
    refused = sonoguide("probe", "set", path, "depth_mm", "55")
    assert refused.returncode == 1 and "out of range" in refused.stderr
    capture = tmp_path / "capture.sgrec"
    assert sonoguide("probe", "record", path, str(capture), "--seconds", "1").returncode == 0
    replay = sonoguide("probe", "replay", str(capture), "--json", "--messages")
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout[replay.stdout.index("{\n") :])
    assert summary["frames"] >= 10 and summary["crc_errors"] == 0 and summary["messages"]["HEARTBEAT"] >= 3
    assert "IDENTIFY" in replay.stdout  # the message listing
    capture.write_bytes(b"not a recording")
    bad = sonoguide("probe", "replay", str(capture))
    assert bad.returncode == 1 and "not a probe recording" in bad.stderr


def test_reconnects_by_itself_when_the_emulator_re_creates_its_pty(emulator, tmp_path: Path) -> None:
    link_path = str(tmp_path / "probe")
    assert emulator("--link", link_path, "--disconnect-after", "1.5", "--disconnect-for", "0.5") == link_path
    r = sonoguide("probe", "stream", link_path, "--seconds", "4", "--json")
    report = json.loads(r.stdout)
    assert report["reconnects"] == 1 and report["frames"] >= 60, report


def test_clear_errors_for_bad_input(tmp_path: Path) -> None:
    r = sonoguide("probe", "info", str(tmp_path / "no-such-tty"))
    assert r.returncode == 1 and "cannot open probe port" in r.stderr
    r = sonoguide("probe-emulator", "--pty", "--corrupt-rate", "2")
    assert r.returncode == 2 and "corrupt_rate must be within 0..1" in r.stderr
    r = sonoguide("probe-emulator", "--pty", "--misbehave", "explode")
    assert r.returncode == 2 and "unknown misbehaviour" in r.stderr


def test_link_throughput_measurement_reports_a_lossless_stream() -> None:
    # Speed itself is a benchmark figure (`sonoguide bench`, docs/benchmarks.md), never a timed test:
    # here only that the measurement runs end to end and that a fault-free stream loses nothing.
    from firmware_bridge.bench import link_throughput

    r = link_throughput(seconds=1.0, fps=60.0)
    assert r["lost"] == 0 and r["crc_errors"] == 0, r
    assert r["fps"] > 0 and 0.0 < r["cpu_fraction"] < 2.0, r
