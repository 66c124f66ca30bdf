"""`sonoguide bench [--quick] [--json FILE]`: latency, throughput, CPU, memory, model speed (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short windows and fewer rates (under 60 s)")
    p.add_argument(
        "--json", type=Path, metavar="FILE", default=Path("build/bench/bench.json"),
        help="write the figures here (default build/bench/bench.json)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from service.tools.benchmark.suite import main

    return main(quick=args.quick, json_path=args.json)
