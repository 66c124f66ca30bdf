"""`sonoguide run [--config FILE]`: the daemon, as systemd starts it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML config (default /etc/sonoguide/config.toml)"
    )


def load_model(config: Any, folder: str = "") -> Any:
    """The configured ONNX model when service.onnxmodel exists, else the heuristic placeholder."""
    from service.inference import HeuristicModel

    try:
        from service import onnxmodel  # type: ignore[attr-defined,unused-ignore]  # lands with the model work
    except ImportError:
        log.warning("no ONNX model support in this build; using the heuristic placeholder model")
        return HeuristicModel()
    return onnxmodel.load_model(folder or config.model.dir, config.model)


def run(args: argparse.Namespace) -> int:
    from service.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
    from service.daemon import Daemon

    try:
        config = load_config(args.config or DEFAULT_CONFIG_PATH)
    except ConfigError as e:
        print(f"sonoguide: {e}", file=sys.stderr)
        return 2
    try:
        from firmware_bridge.link import ProbeLink  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        print(f"sonoguide: the probe link is not available in this build: {e}", file=sys.stderr)
        return 1
    link = ProbeLink(config.probe.port, name="probe")
    link.start()
    try:
        model = load_model(config)

        def loader(folder: str) -> Any:
            m = load_model(config, folder)
            m.warmup()
            return m

        daemon = Daemon(config, link, model, model_loader=loader)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: daemon.request_stop())
        daemon.start()
        log.info(
            "running: device %s, probe %s, broker %s:%d",
            config.device.id,
            config.probe.port,
            config.mqtt.host,
            config.mqtt.port,
        )
        daemon.wait()
        daemon.stop()
    finally:
        link.stop()
    return 0
