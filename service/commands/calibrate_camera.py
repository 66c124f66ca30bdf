"""`sonoguide calibrate-camera`: find the three skin stickers and write the camera-to-patient
calibration (the same computation the daemon runs for ``cmd/calibrate_camera``).

Exit status: 0 written, 1 the camera or the stickers failed (the message says what to fix),
2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, default=None, help="take [camera] from this TOML config")
    src.add_argument("--recording", type=Path, default=None, help="calibrate from a .db3 recording")
    src.add_argument("--serial", default=None, help="calibrate with the live RealSense of this serial")
    parser.add_argument(
        "--out", type=Path, default=None, help="calibration JSON (default: [camera] calibration)"
    )
    parser.add_argument("--frames", type=int, default=10, help="frames to average (default 10)")


def run(args: argparse.Namespace) -> int:
    from service.daemon.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
    from service.tracking import calibration as cal
    from service.tracking.device import CameraSpec, CameraUnavailableError, read_frames

    if args.frames < cal.MIN_FRAMES:
        print(f"sonoguide: --frames must be at least {cal.MIN_FRAMES}", file=sys.stderr)
        return 2
    out = args.out
    if args.recording is not None:
        spec = CameraSpec("recording", recording=str(args.recording), loop=False, real_time=False)
    elif args.serial is not None:
        spec = CameraSpec("realsense", serial=args.serial)
    else:
        try:
            config = load_config(args.config or DEFAULT_CONFIG_PATH)
        except ConfigError as e:
            print(f"sonoguide: {e}", file=sys.stderr)
            return 2
        camera = config.camera
        if camera.source == "none":
            print(
                f'sonoguide: {config.source}: [camera] source = "none": no camera to calibrate',
                file=sys.stderr,
            )
            return 2
        if camera.source == "recording":
            spec = CameraSpec("recording", recording=camera.recording, loop=False, real_time=False)
        elif camera.source == "emulator":
            spec = CameraSpec("emulator", socket=camera.socket)
        else:
            spec = CameraSpec("realsense", serial=camera.serial)
        out = out or Path(camera.calibration)
    if out is None:
        print("sonoguide: say where to write the calibration: --out FILE", file=sys.stderr)
        return 2
    try:
        frames, intr, serial = read_frames(spec, args.frames)
        if not frames:
            raise CameraUnavailableError(f"{spec.label}: no frames")
        result = cal.calibrate_frames(((f.rgb, f.depth_mm) for f in frames), intr, serial)
    except CameraUnavailableError as e:
        print(f"sonoguide: camera: {e}", file=sys.stderr)
        return 1
    except cal.CalibrationError as e:
        print(f"sonoguide: calibration failed: {e}", file=sys.stderr)
        return 1
    try:
        cal.save(result, out)
    except OSError as e:
        print(f"sonoguide: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(f"calibrated from {result.frames} frames, residual {result.residual_mm:.2f} mm: wrote {out}")
    return 0
