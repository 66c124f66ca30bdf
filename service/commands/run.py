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
    """The configured model (``folder`` or ``[model] dir``; empty = the shipped one), hashes verified."""
    from service.daemon.onnx_model import load_model as load_onnx_model

    return load_onnx_model(folder or config.model.dir, config.model)


def run(args: argparse.Namespace) -> int:
    from service.daemon.app import Daemon
    from service.daemon.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

    try:
        config = load_config(args.config or DEFAULT_CONFIG_PATH)
    except ConfigError as e:
        print(f"sonoguide: {e}", file=sys.stderr)
        return 2
    from firmware_bridge.errors import ProbeError
    from firmware_bridge.link import ProbeLink
    from service.daemon.onnx_model import ModelLoadError
    from service.tracking.camera import camera_from_config

    # The model first: a missing or tampered bundle fails fast with its reason, before any device opens.
    try:
        model = load_model(config)
    except ModelLoadError as e:
        print(f"sonoguide: model: {e}", file=sys.stderr)
        return 1
    # The link's reader decodes in Python while pipeline threads wait to be woken: with the default
    # 5 ms GIL switch interval a woken stage can sit that long behind it (seen in latency p99).
    sys.setswitchinterval(0.001)
    link = ProbeLink(config.probe.port, name="probe")
    try:
        # An absent probe is a state, not a failure: the daemon comes up, says "waiting for the probe"
        # (status, STATUS=) and connects when it is plugged in. Incompatible firmware still fails.
        link.start(wait_for_device=True)
    except ProbeError as e:
        print(f"sonoguide: probe: {e}", file=sys.stderr)
        return 1
    # An absent camera does not stop the daemon: guidance runs from the image alone, status says so.
    camera = camera_from_config(config.camera)
    try:
        if camera is not None:
            camera.start()

        def loader(folder: str) -> Any:
            m = load_model(config, folder)
            m.warmup()
            return m

        daemon = Daemon(
            config,
            link,
            model,
            camera=camera,
            model_loader=loader,
            calibrator=camera.calibrate if camera is not None else None,
        )
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
        if camera is not None:
            camera.stop()
        link.stop()
    return 0
