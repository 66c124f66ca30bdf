"""The `sonoguide` command: one table of subcommands, each living in its own small module.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
when the parser is built, so they must keep heavy imports (ONNX Runtime, librealsense) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from service import __version__
from service.daemon.logsetup import setup_logging

# name -> (module, one-line help). The only place a subcommand is registered.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("service.commands.run", "run the guidance daemon (as systemd does)"),
    "demo": (
        "service.commands.demo",
        "everything on the virtual bench with a live view: emulator, broker, daemon",
    ),
    "watch": (
        "service.commands.watch",
        "live view of a device's guidance, quality and auto-tuning on any broker",
    ),
    "display": (
        "service.commands.display",
        "serve the reference handheld display (a web app over MQTT WebSockets) for development",
    ),
    "doctor": (
        "service.commands.doctor",
        "check the probe, camera, model, broker and credentials; say what to fix",
    ),
    "captures": (
        "service.commands.captures",
        "the DICOM captures on this device: list, send to the PACS now, export (de-identified)",
    ),
    "exam": (
        "service.commands.exam",
        "open or close an exam on a device, or query its worklist (over MQTT)",
    ),
    "calibrate-camera": (
        "service.commands.calibrate_camera",
        "find the skin stickers and write the camera-to-patient calibration",
    ),
    "sim": ("service.commands.sim", "virtual bench: simulated B-mode frames and RealSense recordings"),
    "probe": (
        "firmware_bridge.cli",
        "talk to a probe: info, get, set, stream, record, replay, conformance, bench",
    ),
    "eval": (
        "service.commands.eval",
        "closed-loop evaluation with the simulated novice (guided, unguided, oracle)",
    ),
    "bench": ("service.commands.bench", "latency, throughput, CPU, memory and model-speed benchmarks"),
    "faults": (
        "service.commands.faults",
        "the fault campaign: the real daemon, emulator and broker under faults and hostile commands",
    ),
    "probe-emulator": (
        "firmware_bridge.emulator_cli",
        "the reference probe emulator on a pty or serial device",
    ),
    "model": (
        "service.commands.model",
        "field model updates: keygen, pack, verify, install, list, activate, rollback, remove",
    ),
    "analyze": (
        "service.commands.analyze",
        "run the model and the auto gain/depth/guidance decisions on still images",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonoguide",
        description="Smart ultrasound acquisition assistant (advisory guidance, not diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"sonoguide {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--log-format", choices=["auto", "human", "journal"], default="auto")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd_parser)
        cmd_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    setup_logging(
        level=min(level, logging.INFO) if args.command in {"run", "demo"} else level, fmt=args.log_format
    )
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sonoguide doctor | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
