"""`sonoguide display [--broker URL] [--device ID] [--port P]`: serve the reference display for development.

Serves service/display/static on loopback and prints the page's address with the broker and device
filled in. The broker must have a WebSocket listener (the shipped config: ws://127.0.0.1:9001; the
demo's broker has one too). See docs/display.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from urllib.parse import urlsplit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        default="ws://127.0.0.1:9001",
        help="the broker's MQTT-over-WebSockets URL, ws:// or wss:// (default ws://127.0.0.1:9001)",
    )
    parser.add_argument("--device", default="sonoguide-01", help="device id (default sonoguide-01)")
    parser.add_argument("--username", default="", help="broker account; the page asks for its password")
    parser.add_argument("--bind", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to serve on (default 8090; 0: any)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    from service.tools.display_server import DisplayServer

    scheme = urlsplit(args.broker).scheme
    if scheme not in ("ws", "wss"):
        print(f"sonoguide display: --broker {args.broker!r}: must be a ws:// or wss:// URL", file=sys.stderr)
        return 2
    if args.duration < 0 or not 0 <= args.port <= 65535:
        print("sonoguide display: --duration must be >= 0 and --port within 0..65535", file=sys.stderr)
        return 2
    try:
        server = DisplayServer(args.bind, args.port).start()
    except OSError as e:
        print(f"sonoguide display: cannot serve on {args.bind}:{args.port}: {e}", file=sys.stderr)
        return 1
    extra = {"username": args.username} if args.username else {}
    print(f"display: {server.page_url(args.broker, args.device, **extra)}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait(args.duration or None)
    server.stop()
    return 0
