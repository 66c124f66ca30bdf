"""The daemon's TOML config: parsed, validated and frozen at start.

The file layout is the contract in docs/architecture.md ("Config file"), shared with the install script
and ``sonoguide doctor``. Every key has a default, so an empty file (or no file, for the demo) is valid.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key and the file.
Secrets never come from the file: the MQTT password comes from ``$SONOGUIDE_MQTT_PASSWORD`` or the
systemd credential ``mqtt-password``; the TLS client key from the credential ``mqtt-tls-key`` or
``key_file``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/sonoguide/config.toml")
PASSWORD_ENV = "SONOGUIDE_MQTT_PASSWORD"
PASSWORD_CREDENTIAL = "mqtt-password"
TLS_KEY_CREDENTIAL = "mqtt-tls-key"
PROVIDERS = ("tensorrt", "cuda", "cpu")
CAMERA_SOURCES = ("none", "realsense", "recording", "emulator")
# The device id becomes an MQTT topic level: no wildcards, no separators, nothing a shell would mangle.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A config problem; the message names the file and the key."""


# --- checks: a field's ``metadata={"check": ...}`` (the schema is derived from the dataclasses) -------

Check = Callable[[Any], str | None]  # returns a problem description or None


def _range(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(repr, choices))}, got {v!r}"


def _device_id(v: str) -> str | None:
    if _DEVICE_ID.match(v):
        return None
    return f"must be 1-64 letters, digits, '.', '_' or '-' (it is an MQTT topic level), got {v!r}"


def _providers(v: list[str]) -> str | None:
    if not v:
        return "must name at least one execution provider"
    bad = [p for p in v if p not in PROVIDERS]
    return f"unknown provider(s) {bad}; known: {list(PROVIDERS)}" if bad else None


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


_AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,15}$")
_UID_ROOT = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _ae_title(v: str) -> str | None:
    if _AE_TITLE.match(v) and v == v.rstrip():
        return None
    return f"must be a DICOM AE title (1-16 printable ASCII characters, no backslash), got {v!r}"


def _uid_root(v: str) -> str | None:
    if not v:
        return None
    if _UID_ROOT.match(v) and len(v) <= 40:
        return None
    return f"must be empty (UUID-derived UIDs, 2.25) or a registered UID root of at most 40 characters, got {v!r}"


def _key(default: Any, check: Check | None = None) -> Any:
    """A config key: its default and the check its value must pass."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _key("sonoguide-01", _device_id)


@dataclass(frozen=True)
class ProbeConfig:
    port: str = _key("/dev/sonoguide-probe", _not_empty)


@dataclass(frozen=True)
class CameraConfig:
    source: str = _key("none", _one_of(CAMERA_SOURCES))
    serial: str = ""
    recording: str = ""
    socket: str = ""  # source = "emulator": the camera emulator's Unix socket (the bench's live camera)
    calibration: str = "/var/lib/sonoguide/camera-calibration.json"


@dataclass(frozen=True)
class ModelConfig:
    dir: str = ""
    providers: tuple[str, ...] = _key(PROVIDERS, _providers)
    engine_cache: str = "/var/lib/sonoguide/trt-cache"
    # Field updates (docs/model-updates.md): the versioned store (state dir, writable), the trusted
    # vendor keys (config dir, read-only), and how a new version is swapped in and watched.
    store: str = "/var/lib/sonoguide/models"
    keys: str = "/etc/sonoguide/model-keys"
    safe_after_s: float = _key(3.0, _range(0.0, 600.0))
    probation_s: float = _key(60.0, _range(0.0, 86400.0))
    probation_max_latency_ms: float = _key(250.0, _range(0.001, 60000.0))


@dataclass(frozen=True)
class MqttConfig:
    host: str = _key("127.0.0.1", _not_empty)
    port: int = _key(1883, _range(1, 65535))
    username: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # From the environment or systemd credentials only, never the file (not in the schema);
    # repr=False keeps it out of logs and tracebacks.
    password: str = field(default="", repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class AutoConfig:
    gain: bool = True
    depth: bool = True
    manual_pause_s: float = _key(10.0, _range(0.0, 3600.0))


@dataclass(frozen=True)
class GuidanceConfig:
    good_quality: float = _key(0.8, _range(0.0, 1.0))
    capture_after_s: float = _key(1.0, _range(0.0, 60.0))


@dataclass(frozen=True)
class PacsConfig:
    """Where captures go (DICOM C-STORE). No host: captures stay on the device (docs/captures.md)."""

    host: str = ""
    port: int = _key(104, _range(1, 65535))
    called_ae: str = _key("PACS", _ae_title)
    calling_ae: str = _key("SONOGUIDE", _ae_title)
    timeout_s: float = _key(30.0, _range(0.5, 600.0))
    retry_initial_s: float = _key(5.0, _range(0.05, 3600.0))
    retry_max_s: float = _key(300.0, _range(0.05, 86400.0))
    # Storage Commitment: ask the PACS to commit what it stored, and delete only after it did. Its
    # answer comes to our SCP on commitment_port (the PACS must know calling_ae at this address).
    commitment: bool = False
    commitment_port: int = _key(11112, _range(1, 65535))
    commitment_timeout_s: float = _key(600.0, _range(0.1, 86400.0))
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class WorklistConfig:
    """The Modality Worklist (DICOM C-FIND). No host: exams are entered by hand."""

    host: str = ""
    port: int = _key(104, _range(1, 65535))
    called_ae: str = _key("WORKLIST", _ae_title)
    timeout_s: float = _key(10.0, _range(0.5, 600.0))
    max_results: int = _key(200, _range(1, 5000))


@dataclass(frozen=True)
class CapturesConfig:
    # Empty: $STATE_DIRECTORY/captures (systemd's StateDirectory), else /var/lib/sonoguide/captures.
    dir: str = ""
    quota_mb: float = _key(2048.0, _range(0.01, 1e7))
    retention_days: float = _key(7.0, _range(0.0, 3650.0))
    deidentify: bool = False
    uid_root: str = _key("", _uid_root)
    institution: str = ""


@dataclass(frozen=True)
class Config:
    device: DeviceConfig = DeviceConfig()
    probe: ProbeConfig = ProbeConfig()
    camera: CameraConfig = CameraConfig()
    model: ModelConfig = ModelConfig()
    mqtt: MqttConfig = MqttConfig()
    auto: AutoConfig = AutoConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    pacs: PacsConfig = PacsConfig()
    worklist: WorklistConfig = WorklistConfig()
    captures: CapturesConfig = CapturesConfig()
    source: str = "<defaults>"  # the file it came from, for messages


# --- the schema: section -> key -> (kind, check), from the dataclasses' fields ------------------------

_KINDS = {"str": "str", "int": "int", "bool": "bool", "float": "float", "tuple[str, ...]": "list[str]"}
_SECTION_TYPES: dict[str, type] = {
    f.name: type(f.default) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default)
}
_SCHEMA: dict[str, dict[str, tuple[str, Check | None]]] = {
    section: {
        f.name: (_KINDS[str(f.type)], f.metadata.get("check"))
        for f in dataclasses.fields(cls)
        if not f.metadata.get("secret")
    }
    for section, cls in _SECTION_TYPES.items()
}


def _typed(kind: str, value: Any) -> tuple[Any, str | None]:
    """The value converted to ``kind``, or a description of the type mismatch."""
    name = type(value).__name__
    if kind == "str":
        return (value, None) if isinstance(value, str) else (None, f"expected a string, got {name}")
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, f"expected true or false, got {name}")
    if kind == "int":  # bool is an int in Python, never in a config file
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, f"expected an integer, got {name}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, f"expected a number, got {name}"
    if kind == "list[str]":
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return tuple(value), None
        return None, f"expected a list of strings, got {name}"
    raise AssertionError(kind)


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed TOML document and attach the secrets; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    for section, body in data.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(_SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {type(body).__name__}")
    sections: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        body = data.get(section, {})
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in keys:
                raise ConfigError(
                    f"{source}: unknown key '{key}' in [{section}]; known: {', '.join(keys)}"
                    + (
                        " (the password never goes in the file: see $SONOGUIDE_MQTT_PASSWORD)"
                        if key == "password"
                        else ""
                    )
                )
            kind, check = keys[key]
            converted, problem = _typed(kind, value)
            if problem is None and check is not None:
                problem = check(converted)
            if problem is not None:
                raise ConfigError(f"{source}: [{section}] {key}: {problem}")
            values[key] = converted
        sections[section] = values
    mqtt = sections["mqtt"]
    mqtt["password"] = _mqtt_password(env)
    mqtt["key_file"] = _tls_key_file(env, mqtt.get("key_file", ""))
    if mqtt.get("tls"):
        for key in ("ca_file", "cert_file", "key_file"):
            if mqtt.get(key) and not Path(mqtt[key]).is_file():
                raise ConfigError(
                    f"{source}: [mqtt] {key}: no such file {mqtt[key]!r} (needed with tls = true)"
                )
    pacs = sections["pacs"]
    if pacs.get("tls"):
        for key in ("ca_file", "cert_file", "key_file"):
            if pacs.get(key) and not Path(pacs[key]).is_file():
                raise ConfigError(
                    f"{source}: [pacs] {key}: no such file {pacs[key]!r} (needed with tls = true)"
                )
    if pacs.get("retry_max_s", PacsConfig.retry_max_s) < pacs.get(
        "retry_initial_s", PacsConfig.retry_initial_s
    ):
        raise ConfigError(f"{source}: [pacs] retry_max_s: must not be less than retry_initial_s")
    camera = sections["camera"]
    if camera.get("source") == "realsense" and not camera.get("serial"):
        raise ConfigError(f'{source}: [camera] serial: required when source = "realsense"')
    if camera.get("source") == "recording" and not camera.get("recording"):
        raise ConfigError(f'{source}: [camera] recording: required when source = "recording"')
    if camera.get("source") == "emulator" and not camera.get("socket"):
        raise ConfigError(f'{source}: [camera] socket: required when source = "emulator"')
    built = {name: _SECTION_TYPES[name](**values) for name, values in sections.items()}
    return Config(**built, source=source)


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; ``None`` means built-in defaults (the demo runs without a file)."""
    if path is None:
        return parse_config({}, "<defaults>", env)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, str(path), env)


def _credential(env: Mapping[str, str], name: str) -> Path | None:
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def _mqtt_password(env: Mapping[str, str]) -> str:
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    cred = _credential(env, PASSWORD_CREDENTIAL)
    # One trailing newline is an artefact of `echo secret > file`, not part of the password.
    return cred.read_text().removesuffix("\n") if cred else ""


def _tls_key_file(env: Mapping[str, str], key_file: str) -> str:
    cred = _credential(env, TLS_KEY_CREDENTIAL)
    return str(cred) if cred else key_file
