"""``sonoguide probe-emulator``: the reference probe on a pseudo-terminal or a serial device path."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--port", metavar="PATH", help="serve on this serial device (e.g. one end of a socat pair)"
    )
    where.add_argument(
        "--pty", action="store_true", help="create a pseudo-terminal; its path is stdout's first line"
    )
    p.add_argument(
        "--link",
        metavar="PATH",
        help="with --pty: keep a stable symlink to the pty (re-pointed after a disconnect)",
    )
    p.add_argument(
        "--preset",
        help="render with the simulator's exam preset (sim/abdomen, vascular, cardiac; the default with "
        "--seed is abdomen); without either: a placeholder pattern",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the phantom / pattern and of the fault injection"
    )
    p.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument(
        "--frame-cache",
        type=int,
        metavar="N",
        help="replay a loop of N pre-rendered frames (re-rendered after a settings change) so the "
        "emulator can stream faster than it renders; for host-side benchmarks, scripted pose only",
    )
    p.add_argument("--gain", type=float, metavar="DB", help="gain at power-on (default: preset's or 50 dB)")
    p.add_argument("--depth", type=float, metavar="MM", help="depth at power-on (one of the depth steps)")
    p.add_argument("--size", default="256x256", help="image WIDTHxHEIGHT (default 256x256)")
    p.add_argument(
        "--pose",
        choices=["scripted", "stdin"],
        default="scripted",
        help='scripted sweep, or JSON lines on stdin: {"position_mm": [x,y,z], "quaternion": [w,x,y,z]}',
    )
    p.add_argument(
        "--lift-every", type=float, metavar="S", help="scripted path: lift the probe off the skin every S s"
    )
    f = p.add_argument_group("fault injection")
    f.add_argument(
        "--corrupt-rate", type=float, default=0.0, help="probability per message of one corrupted byte"
    )
    f.add_argument(
        "--corrupt-byte-rate",
        type=float,
        default=0.0,
        help="probability of each byte (both directions) being flipped: line noise",
    )
    f.add_argument(
        "--drop-chunk-rate", type=float, default=0.0, help="probability that a frame chunk is dropped"
    )
    f.add_argument("--stall-after", type=float, metavar="S", help="go silent after S seconds ...")
    f.add_argument("--stall-for", type=float, default=2.0, metavar="S", help="... for S seconds (default 2)")
    f.add_argument(
        "--reboot-after", type=float, metavar="S", help="reboot (state reset, silent 0.5 s) after S seconds"
    )
    f.add_argument("--disconnect-after", type=float, metavar="S", help="close the pty after S seconds ...")
    f.add_argument(
        "--disconnect-for", type=float, default=1.0, metavar="S", help="... and re-create it S seconds later"
    )
    f.add_argument(
        "--protocol-major", type=int, help="announce this protocol major version (test version refusal)"
    )
    f.add_argument(
        "--misbehave",
        action="append",
        default=[],
        metavar="WHAT",
        help="break conformance on purpose: accept-out-of-range, no-heartbeat, skip-frame-ids, "
        "no-time-sync, wedge-on-garbage (repeatable)",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 256x256, got {text!r}") from None
    if not (16 <= w <= 1024 and 16 <= h <= 1024):
        raise SystemExit(f"--size {text}: width and height must be within 16..1024")
    return w, h


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.emulator import (
        Capabilities,
        Faults,
        FrameCache,
        PatternImageSource,
        ProbeEmulator,
        PtyEndpoint,
        ScriptedPath,
        SimImageSource,
        StreamPoseSource,
    )
    from firmware_bridge.protocol import PROTOCOL_MAJOR

    width, height = _size(args.size)
    if args.fps <= 0 or args.fps > 1000:
        print(f"--fps {args.fps}: must be within (0, 1000]", file=sys.stderr)
        return 2
    if args.link and not args.pty:
        print("--link needs --pty", file=sys.stderr)
        return 2
    try:
        faults = Faults(
            corrupt_rate=args.corrupt_rate,
            corrupt_byte_rate=args.corrupt_byte_rate,
            drop_chunk_rate=args.drop_chunk_rate,
            stall_after_s=args.stall_after,
            stall_for_s=args.stall_for,
            reboot_after_s=args.reboot_after,
            disconnect_after_s=args.disconnect_after,
            disconnect_for_s=args.disconnect_for,
            protocol_major=PROTOCOL_MAJOR if args.protocol_major is None else args.protocol_major,
            misbehave=set(args.misbehave),
        )
    except ValueError as exc:
        print(f"probe-emulator: {exc}", file=sys.stderr)
        return 2
    caps = Capabilities(width=width, height=height, fps=args.fps)
    images: Any
    seed = args.seed if args.seed is not None else 0
    initial: dict[str, float] = {}
    scripted: Any = ScriptedPath(args.lift_every)
    if args.preset or args.seed is not None:  # the simulator; the bare pattern stays for conformance
        preset = args.preset or "abdomen"
        try:
            images = SimImageSource(preset, seed, width, height)
        except (ImportError, ValueError) as exc:
            print(f"probe-emulator: cannot use the simulator preset {preset!r}: {exc}", file=sys.stderr)
            return 2
        for key, value in images.capabilities().items():
            setattr(caps, key, value)
        initial = images.default_params()
        scripted = images.scripted_path()
    else:
        images = PatternImageSource(width, height, seed)
    initial.update({k: v for k, v in (("gain_db", args.gain), ("depth_mm", args.depth)) if v is not None})
    if args.lift_every is not None and not isinstance(scripted, ScriptedPath):
        print("--lift-every works with the placeholder pattern only (the simulated path stays on the skin)",
              file=sys.stderr)  # fmt: skip
        return 2
    # From stdin, the probe rests where the scripted path starts until the first pose line arrives.
    poses = StreamPoseSource(sys.stdin, initial=scripted.pose_at(0.0)) if args.pose == "stdin" else scripted
    if args.frame_cache is not None:
        if args.pose == "stdin":
            print("--frame-cache replays the scripted path; it cannot follow --pose stdin", file=sys.stderr)
            return 2
        try:
            images = FrameCache(images, scripted, args.frame_cache, args.fps)
        except ValueError as exc:
            print(f"probe-emulator: --frame-cache: {exc}", file=sys.stderr)
            return 2
    if args.disconnect_after is not None and not args.pty:
        print(
            "--disconnect-after needs --pty (the emulator must own the pty to re-create it)", file=sys.stderr
        )
        return 2
    try:
        port: Any = PtyEndpoint(args.link) if args.pty else args.port
        emulator = ProbeEmulator(port, images, poses, caps, faults, seed=seed, initial_params=initial)
    except OSError as exc:
        print(f"probe-emulator: cannot open {args.port or args.link}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"probe-emulator: {exc} (probe offers gain {caps.gain_min:g}..{caps.gain_max:g} dB, "
              f"depths {caps.depths_mm} mm)", file=sys.stderr)  # fmt: skip
        return 2
    if isinstance(images, FrameCache):  # render the first loop before a host can ask for frames
        images.fill(emulator.params.snapshot())
    print(emulator.endpoint.path, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        emulator.serve()
    finally:
        if isinstance(port, PtyEndpoint):
            port.remove_link()
            port.close()
    return 0
