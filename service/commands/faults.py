"""`sonoguide faults [--long] [--only F,...] [--soak S] [--json FILE]`: the standing fault campaign
against the real daemon, emulator and broker (service/tools/fault_campaign.py, docs/reliability.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long", action="store_true", help="every fault, longer, thousands of fuzzed commands")
    p.add_argument("--only", metavar="F,...", help="these faults only (names as in the table)")
    p.add_argument("--soak", type=float, metavar="S", help="instead: run S seconds and report RSS growth")
    p.add_argument(
        "--json", type=Path, metavar="FILE", default=Path("build/faults/faults.json"),
        help="write the results here (default build/faults/faults.json)",
    )  # fmt: skip


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model or platform.processor() or platform.machine()}), Python {platform.python_version()}"


def run(args: argparse.Namespace) -> int:
    try:
        import hypothesis  # noqa: F401  (the fuzzed commands)
    except ImportError:
        print("sonoguide faults needs hypothesis: pip install 'sonoguide[dev]'", file=sys.stderr)
        return 2
    from service.tools import fault_campaign as fc

    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.soak:
        result = fc.soak(args.soak)
        result["machine"] = machine()
        args.json.write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
        return 0 if result["crashes"] == 0 else 1
    faults = tuple(args.only.split(",")) if args.only else (fc.LONG if args.long else fc.SHORT)
    try:
        results = fc.run_campaign(
            faults, "long" if args.long else "short", log=lambda s: print(s, file=sys.stderr)
        )
    except ValueError as exc:
        print(f"sonoguide faults: {exc}", file=sys.stderr)
        return 2
    args.json.write_text(
        json.dumps({"machine": machine(), "results": [r.as_dict() for r in results]}, indent=2)
    )
    print(fc.format_table(results))
    print(f"\n{machine()}; written to {args.json}")
    bad = [
        r
        for r in results
        if r.recovery_s is None
        or r.wrong_writes
        or r.lost_replies
        or r.lost_events
        or r.crashes
        or r.false_manual
    ]
    return 1 if bad else 0
