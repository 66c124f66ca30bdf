"""``sonoguide doctor [--json]``: is everything the daemon needs here? One line per check, with what to
do when one fails; exit status 1 when any fails.

The config is read and validated by the daemon's own loader (service/daemon/config.py), so doctor and the
daemon never disagree about a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.tools.doctor_checks import (
    CheckResult,
    check_broker,
    check_camera,
    check_credentials,
    check_dicom_peer,
    check_model_files,
    check_model_keys,
    check_model_runtime,
    check_model_store,
    check_probe_port,
    find_shipped_model,
)
from service.tools.doctor_service import RunningService, ask_running_service

DEFAULT_CONFIG_PATH = Path("/etc/sonoguide/config.toml")
# Where systemd's LoadCredential= takes the secrets from (the service sees $CREDENTIALS_DIRECTORY).
DEFAULT_CREDSTORE = Path("/etc/credstore")
MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"


def probe_seen_by_service(port: str, running: RunningService) -> CheckResult:
    """The probe as the running daemon reports it (doctor leaves its port alone)."""
    probe = running.status.get("probe", {})
    state = str(probe.get("state", "unknown"))
    detail = (
        f"{port} is held by the running sonoguide service (ping answered: version {running.version}, "
        f"up {running.uptime_s:.0f} s); it reports the probe {state}"
        + (f": {probe['info']}" if probe.get("info") else "")
    )
    ok = state in ("ok", "frozen")
    fix = "" if ok else "see `journalctl -u sonoguide`; `systemctl stop sonoguide` to check the port itself"
    return CheckResult("probe port", ok, detail, fix)


def config_sections(config: Any) -> dict[str, dict[str, Any]]:
    """The validated config as plain sections (secrets left out: doctor checks them on its own)."""
    sections = {f.name: dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config)
                if f.name != "source"}  # fmt: skip
    sections["mqtt"].pop("password", None)
    return sections


def _overlay_readable_values(path: Path, defaults: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An invalid file still names the port, broker and model to check: take its known keys as they are."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return defaults
    return {
        name: {**values, **{k: v for k, v in (data.get(name) or {}).items() if k in values}}
        if isinstance(data.get(name, {}), dict)
        else values
        for name, values in defaults.items()
    }


def run_checks(
    config: Mapping[str, Mapping[str, Any]],
    credentials_dir: Path | None,
    env_password: str | None,
    models_root: Path = MODELS_ROOT,
    timeout: float = 3.0,
) -> list[CheckResult]:
    """Every check, in the order a technician would fix things."""
    mqtt = config["mqtt"]
    cred_result, password = check_credentials(
        str(mqtt["username"]),
        credentials_dir,
        env_password,
        bool(mqtt["tls"]),
        str(mqtt["cert_file"]),
        str(mqtt["key_file"]),
    )
    key_file = str(mqtt["key_file"])
    if credentials_dir is not None and (credentials_dir / "mqtt-tls-key").exists():
        key_file = str(credentials_dir / "mqtt-tls-key")
    broker_args = (
        str(mqtt["host"]),
        int(mqtt["port"]),
        str(mqtt["username"]),
        password,
        bool(mqtt["tls"]),
        str(mqtt["ca_file"]),
        str(mqtt["cert_file"]),
        key_file,
    )
    # A running service holds the probe port: ask it, never open the port under it.
    running = ask_running_service(str(config["device"]["id"]), *broker_args, timeout=timeout)
    port = str(config["probe"]["port"])
    results = [check_probe_port(port) if running is None else probe_seen_by_service(port, running)]
    cam = config["camera"]
    results.append(check_camera(str(cam["source"]), str(cam["serial"]), str(cam["recording"])))
    model = config["model"]
    model_result = check_model_files(str(model["dir"]), models_root)
    results.append(model_result)
    results.append(check_model_runtime(_model_file(str(model["dir"]), models_root), list(model["providers"])))
    results.append(check_model_keys(str(model["keys"]), str(model["dir"])))
    results.append(check_model_store(str(model["store"]), str(model["keys"]), str(model["dir"])))
    results.append(cred_result)
    results.append(check_broker(*broker_args, timeout=timeout))
    pacs, worklist = config.get("pacs"), config.get("worklist")
    if pacs is not None:
        results.append(
            check_dicom_peer(
                "pacs",
                str(pacs["host"]),
                int(pacs["port"]),
                str(pacs["called_ae"]),
                str(pacs["calling_ae"]),
                timeout,
                bool(pacs["tls"]),
                str(pacs["ca_file"]),
                str(pacs["cert_file"]),
                str(pacs["key_file"]),
            )
        )
    if worklist is not None and pacs is not None:
        results.append(
            check_dicom_peer(
                "worklist",
                str(worklist["host"]),
                int(worklist["port"]),
                str(worklist["called_ae"]),
                str(pacs["calling_ae"]),
                timeout,
            )
        )
    return results


def _model_file(model_dir: str, models_root: Path) -> Path | None:
    """The .onnx file a model folder's manifest lists, if there is one."""
    folder = Path(model_dir) if model_dir else find_shipped_model(models_root)
    try:
        files = json.loads((folder / "manifest.json").read_text())["files"] if folder else {}
        onnx = sorted(n for n in files if str(n).endswith(".onnx"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return folder / onnx[0] if folder and onnx and (folder / onnx[0]).is_file() else None


def format_line(result: CheckResult) -> str:
    line = f"[{' OK ' if result.ok else 'FAIL'}] {result.name}: {result.detail}"
    if result.fix:
        line += f"\n       {'fix' if not result.ok else 'hint'}: {result.fix}"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help=f"config file (default: {DEFAULT_CONFIG_PATH})"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--credentials-dir",
        type=Path,
        default=None,
        help=f"where the secrets are (default: $CREDENTIALS_DIRECTORY, else {DEFAULT_CREDSTORE})",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the broker")


def run(args: argparse.Namespace) -> int:
    config_path: Path = args.config or DEFAULT_CONFIG_PATH
    results: list[CheckResult] = []
    # Imported here: command modules stay light at parser build (tomli on 3.10 is only needed to run).
    from service.daemon.config import ConfigError, load_config

    defaults = config_sections(load_config(None, env={}))
    if config_path.is_file():
        try:
            # The daemon's own validation: unknown keys, wrong types and bad values fail here as there.
            config = config_sections(load_config(config_path, env={}))
            results.append(CheckResult("config", True, f"read {config_path}"))
        except ConfigError as exc:
            config = _overlay_readable_values(config_path, defaults)
            results.append(CheckResult("config", False, str(exc), "fix the file, then run doctor again"))
    else:
        config = defaults
        results.append(
            CheckResult(
                "config",
                False,
                f"no config file at {config_path}; checking with the built-in defaults",
                "install one with systemd/install.sh, or pass --config FILE",
            )
        )
    cred_env = os.environ.get("CREDENTIALS_DIRECTORY")
    credentials_dir = args.credentials_dir or (Path(cred_env) if cred_env else DEFAULT_CREDSTORE)
    results += run_checks(
        config, credentials_dir, os.environ.get("SONOGUIDE_MQTT_PASSWORD") or None, timeout=args.timeout
    )
    failed = [r.name for r in results if not r.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        for r in results:
            print(format_line(r))
        print(
            f"{len(results) - len(failed)} of {len(results)} checks passed"
            + (f"; failing: {', '.join(failed)}" if failed else "")
        )
    return 1 if failed else 0
