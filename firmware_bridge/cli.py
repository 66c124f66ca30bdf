"""``sonoguide probe ...``: the firmware team's tool (info, get, set, stream, record, replay, conformance)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="probe_command", metavar="ACTION", required=True)
    s = sub.add_parser("info", help="identify the device: versions, serial, capabilities")
    s.add_argument("port", help="device path or pyserial URL")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("get", help="read one parameter")
    s.add_argument("port")
    s.add_argument("name", help="gain_db, depth_mm, freq_mhz, tgc_db, frozen")
    s.add_argument("--index", type=int, default=0, help="TGC band (tgc_db only)")
    s = sub.add_parser("set", help="set one parameter; prints the value read back")
    s.add_argument("port")
    s.add_argument("name")
    s.add_argument("value", type=float)
    s.add_argument("--index", type=int, default=0)
    s = sub.add_parser("stream", help="receive frames for a while and report rate, losses and errors")
    s.add_argument("port")
    s.add_argument("--seconds", type=float, default=5.0)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("record", help="capture the raw bytes the device sends into a file")
    s.add_argument("port")
    s.add_argument("file")
    s.add_argument("--seconds", type=float, default=5.0)
    s = sub.add_parser("replay", help="decode a capture made by `probe record`")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--messages", action="store_true", help="also list every message except frame chunks")
    s = sub.add_parser("conformance", help="run the checks every device must pass; non-zero exit on failure")
    s.add_argument("port")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("bench", help="link throughput against the emulator on a pty (fps, loss, CPU)")
    s.add_argument("--seconds", type=float, default=5.0)
    s.add_argument("--fps", type=float, default=120.0)
    s.add_argument("--json", action="store_true")


def _print(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.errors import ProbeError
    from firmware_bridge.recording import RecordingError

    try:
        return _COMMANDS[args.probe_command](args)
    except (ProbeError, RecordingError, ValueError, OSError) as exc:
        print(f"probe {args.probe_command}: {exc}", file=sys.stderr)
        return 1


def _link(args: argparse.Namespace, reconnect: bool = False) -> Any:
    from firmware_bridge.link import ProbeLink

    return ProbeLink(args.port, name="probe", reconnect=reconnect).start()


def _info(args: argparse.Namespace) -> int:
    link = _link(args)
    try:
        info = link.info.as_dict()
        info["status"] = link.status or None
    finally:
        link.stop()
    _print(info, args.json)
    return 0


def _get(args: argparse.Namespace) -> int:
    link = _link(args)
    try:
        print(link.get_param(args.name, args.index))
    finally:
        link.stop()
    return 0


def _set(args: argparse.Namespace) -> int:
    link = _link(args)
    try:
        print(link.set_param(args.name, args.value, args.index))
    finally:
        link.stop()
    return 0


def _stream(args: argparse.Namespace) -> int:
    link = _link(args, reconnect=True)
    latencies: list[float] = []
    try:
        s0 = link.stats()
        t0 = time.monotonic()
        next_set = t0 + 0.25
        while (now := time.monotonic()) - t0 < args.seconds:
            link.latest_frame(timeout=0.05)
            if now >= next_set:  # round trip of a harmless set (same value), confirmed by read-back
                gain = link.get_param("gain_db")
                ts = time.monotonic()
                link.set_param("gain_db", gain)
                latencies.append((time.monotonic() - ts) * 1000)
                next_set = now + 0.5
        wall = time.monotonic() - t0
        s1 = link.stats()
    finally:
        link.stop()

    def delta(key: str) -> int:
        return int(s1.get(key, 0) - s0.get(key, 0))

    report = {
        "seconds": round(wall, 3),
        "frames": delta("frames_ok"),
        "fps": round(delta("frames_ok") / wall, 2),
        "dropped_frames": delta("frames_lost"),
        "crc_errors": delta("crc_errors"),
        "discarded_bytes": delta("discarded_bytes"),
        "sequence_gaps": delta("seq_gaps"),
        "reconnects": delta("reconnects"),
        "set_param_round_trips": len(latencies),
        "set_param_latency_ms_median": round(statistics.median(latencies), 3) if latencies else None,
        "set_param_latency_ms_max": round(max(latencies), 3) if latencies else None,
    }
    _print(report, args.json)
    return 0


def _record(args: argparse.Namespace) -> int:
    from firmware_bridge.link import ProbeLink
    from firmware_bridge.recording import Recorder

    rec = Recorder(args.file)
    link = ProbeLink(args.port, name="probe", reconnect=False)
    link.add_raw_tap(lambda data: rec.write(time.monotonic(), data))  # before start: the handshake too
    try:
        link.start()
        time.sleep(args.seconds)
    finally:
        link.stop()
        rec.close()
    print(f"recorded {rec.bytes} bytes to {args.file}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from firmware_bridge.recording import replay

    lines: list[str] | None = [] if args.messages else None
    summary = replay(args.file, lines)
    for line in lines or []:
        print(line)
    _print(summary, args.json)
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from firmware_bridge.conformance import run_conformance

    results = run_conformance(args.port)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            print(r.line())
    failed = [r.name for r in results if not r.passed]
    print(
        f"{len(results) - len(failed)}/{len(results)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def _bench(args: argparse.Namespace) -> int:
    from firmware_bridge.bench import link_throughput

    _print(link_throughput(args.seconds, args.fps), args.json)
    return 0


_COMMANDS = {
    "info": _info,
    "get": _get,
    "set": _set,
    "stream": _stream,
    "record": _record,
    "replay": _replay,
    "conformance": _conformance,
    "bench": _bench,
}
