"""`sonoguide sim`: simulated B-mode frames and camera recordings from the virtual bench.

sonoguide sim frames --preset abdomen --seed 1 --count 20 --out DIR
sonoguide sim camera --seed 1 --seconds 3 --out FILE.db3
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    frames = sub.add_parser("frames", help="write simulated B-mode frames (PNG) and frames.json")
    frames.add_argument("--preset", default="abdomen", help="exam preset: abdomen, vascular, cardiac")
    frames.add_argument("--seed", type=int, default=0, help="phantom and view seed")
    frames.add_argument("--count", type=int, default=10, help="number of frames")
    frames.add_argument("--out", required=True, type=Path, help="output folder (created)")
    frames.add_argument("--size", type=int, default=256, help="image height and width in pixels")
    frames.add_argument(
        "--spread", type=float, default=1.0, help="how far views stray from the standard view"
    )
    camera = sub.add_parser("camera", help="write a RealSense recording (.db3) of the probe over the patient")
    camera.add_argument("--seed", type=int, default=0)
    camera.add_argument("--seconds", type=float, default=2.0)
    camera.add_argument("--preset", default="abdomen")
    camera.add_argument("--out", required=True, type=Path, help="recording path, must end in .db3")


def _frames(args: argparse.Namespace) -> int:
    import numpy as np

    from sim.dataset import random_view
    from sim.phantom import make_phantom
    from sim.png import write_atomic, write_png
    from sim.scanner import Scanner
    from sim.truth import ground_truth

    if args.count < 1 or args.size < 16:
        print("error: --count must be >= 1 and --size >= 16", file=sys.stderr)
        return 2
    try:
        ph = make_phantom(args.preset, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    sc = Scanner(ph, size=(args.size, args.size))
    rng = np.random.default_rng([args.seed, 0xF2A3E])
    records = []
    for i in range(args.count):
        # Frame 0 is the standard view at the preset's defaults; the rest are drawn around it.
        pose, settings = (ph.target_pose, ph.preset.default) if i == 0 else random_view(ph, rng, args.spread)
        image = sc.render(pose, settings, i)
        name = f"frame_{i:05d}.png"
        write_png(args.out / name, image)
        records.append(
            {
                "file": name,
                "frame_index": i,
                "pose": pose.as_dict(),
                "gain_db": settings.gain_db,
                "depth_mm": settings.depth_mm,
                "freq_mhz": settings.freq_mhz,
                "tgc_db": list(settings.tgc_db),
                "truth": ground_truth(ph, pose, settings).as_dict(),
            }
        )
    doc = {
        "preset": ph.preset.name,
        "seed": args.seed,
        "size": [args.size, args.size],
        "target": ph.target_name,
        "target_pose": ph.target_pose.as_dict(),
        "frames": records,
    }
    write_atomic(args.out / "frames.json", (json.dumps(doc, indent=1) + "\n").encode())
    log.info("wrote %d %s frames to %s", args.count, ph.preset.name, args.out)
    print(f"wrote {args.count} frames and frames.json to {args.out}")
    return 0


def _camera(args: argparse.Namespace) -> int:
    from sim.camera import write_recording

    if args.out.suffix != ".db3":
        print(f"error: {args.out}: librealsense recordings must end in .db3", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 600:
        print("error: --seconds must be in (0, 600]", file=sys.stderr)
        return 2
    try:
        info = write_recording(args.out, seed=args.seed, seconds=args.seconds, preset=args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['frames']} frames to {args.out} (ground truth: {info['sidecar']})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.sim_command == "frames":
        return _frames(args)
    if args.sim_command == "camera":
        return _camera(args)
    print("usage: sonoguide sim {frames,camera} ... (see --help)", file=sys.stderr)
    return 2
