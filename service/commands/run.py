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


def open_model_store(config: Any) -> tuple[Any, str, list[str]]:
    """(store or None, the model folder to serve, notes for the events): the store's active version
    when it verifies (docs/model-updates.md), else its previous, else the shipped factory model.
    ``[model] dir`` set: that folder, and no updates. An unusable store never stops the daemon."""
    if config.model.dir:
        return None, config.model.dir, []
    from service import __version__
    from service.daemon.mqtt_commands import PRESET_SETTINGS
    from service.daemon.onnx_model import shipped_model_dir
    from service.model_store import ModelStoreError
    from service.model_store.keys import Trust
    from service.model_store.store import Factory, ModelStore

    factory = shipped_model_dir()
    try:
        store = ModelStore(
            Path(config.model.store), Factory.from_folder(factory), __version__, tuple(PRESET_SETTINGS)
        )
        _state, folder, notes = store.resolve_active(Trust.load(Path(config.model.keys)))
    except (ModelStoreError, OSError) as exc:
        log.warning(
            "model store %s unusable (%s): serving the factory model, updates off", config.model.store, exc
        )
        return None, str(factory), [f"model store unusable: {exc}"]
    for note in notes:
        log.warning("model store: %s", note)
    return store, str(folder), notes


def capture_services(config: Any, link: Any) -> tuple[Any, Any]:
    """The capture store and forwarder, and the worklist client when [worklist] names a host."""
    from service.daemon.captures import CaptureService
    from service.daemon.probe import describe_info
    from service.daemon.worklist import WorklistClient

    captures = CaptureService(
        config.captures,
        config.pacs,
        config.device.id,
        event=lambda *a, **k: None,  # the daemon connects its events
        probe_description=describe_info(getattr(link, "info", None)),
    )
    worklist = WorklistClient(config.worklist, config.pacs.calling_ae).find if config.worklist.host else None
    return captures, worklist


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
    store, folder, notes = open_model_store(config)
    try:
        model = load_model(config, folder)
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

        def loader(folder: Path) -> Any:
            return load_model(config, str(folder))  # warmed up at load

        captures, worklist = capture_services(config, link)
        daemon = Daemon(
            config,
            link,
            model,
            captures=captures,
            worklist=worklist,
            camera=camera,
            model_loader=loader,
            model_store=store,
            store_notes=notes,
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
