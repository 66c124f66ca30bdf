"""`sonoguide watch [--broker URL] [--device ID]`: the demo's live view attached to any broker.

For technicians and display developers: shows what one device publishes (guidance, quality, settings
with auto flags, the last automatic change and why, fps, latency), read-only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS, system CAs) (default mqtt://127.0.0.1:1883)",
    )
    parser.add_argument("--device", help="device id (default: the first device heard from)")
    parser.add_argument("--username", default="", help="MQTT user; password from $SONOGUIDE_MQTT_PASSWORD")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: Ctrl-C)")
    parser.add_argument("--plain", action="store_true", help="one line a second, even on a terminal")


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from ``mqtt://host:port``, ``mqtts://host``, or a bare ``host[:port]``."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in SCHEMES:
        raise ValueError(f"--broker {url!r}: scheme must be one of {', '.join(SCHEMES)}")
    default_port, tls = SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"--broker {url!r}: the port must be a number within 1..65535") from None
    if not parts.hostname:
        raise ValueError(f"--broker {url!r}: no host")
    return parts.hostname, port, tls


def run(args: argparse.Namespace) -> int:
    from service.tools.view import LiveView

    try:
        host, port, tls = parse_broker(args.broker)
    except ValueError as e:
        print(f"sonoguide watch: {e}", file=sys.stderr)
        return 2
    if args.duration < 0:
        print("sonoguide watch: --duration must not be negative", file=sys.stderr)
        return 2
    view = LiveView(
        host, port, args.device, title=f"sonoguide watch {host}:{port}", live=False if args.plain else None,
        username=args.username, password=os.environ.get("SONOGUIDE_MQTT_PASSWORD", ""), tls=tls,
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not view.connected.wait(5):
            print(
                f"sonoguide watch: cannot reach the broker at {host}:{port} yet; still trying",
                file=sys.stderr,
            )
        view.run(stop, args.duration or None)
    finally:
        view.close()
    return 0
