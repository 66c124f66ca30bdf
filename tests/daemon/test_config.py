"""Config: the documented file parses, defaults make an empty file valid, every mistake names key and file."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.daemon import config as config_module
from service.daemon.config import Config, ConfigError, load_config, parse_config

ARCH = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _documented_example() -> str:
    text = ARCH.read_text()
    section = text.split("## Config file", 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_documented_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_documented_example())
    cfg = load_config(path, env={})
    assert cfg.device.id == "sonoguide-01"
    assert cfg.mqtt.port == 1883 and cfg.mqtt.tls is False
    assert cfg.model.providers == ("tensorrt", "cuda", "cpu")
    assert cfg.auto.manual_pause_s == 10.0 and cfg.guidance.good_quality == 0.8
    assert cfg.source == str(path)


def test_empty_file_and_no_file_give_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    assert load_config(path, env={}).mqtt == Config().mqtt
    assert load_config(None, env={}).device.id == "sonoguide-01"


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("[mqtt]\nprot = 1883\n", ["unknown key 'prot'", "[mqtt]"]),
        ('[mqtt]\nport = "1883"\n', ["[mqtt] port", "expected an integer", "str"]),
        ("[mqtt]\nport = 70000\n", ["[mqtt] port", "between 1 and 65535"]),
        ("[auto]\ngain = 1\n", ["[auto] gain", "true or false"]),
        ("[guidance]\ngood_quality = 1.5\n", ["[guidance] good_quality", "between 0.0 and 1.0"]),
        ('[camera]\nsource = "kinect"\n', ["[camera] source", "'realsense'"]),
        ('[camera]\nsource = "recording"\n', ["[camera] recording", "required"]),
        ('[model]\nproviders = ["rocm"]\n', ["[model] providers", "rocm"]),
        ('[device]\nid = "a/b"\n', ["[device] id", "MQTT topic level"]),
        ('[mqtt]\npassword = "hunter2"\n', ["unknown key 'password'", "SONOGUIDE_MQTT_PASSWORD"]),
        ("[mqtt]\nport = 1883\n[extra]\n", ["unknown section [extra]"]),
        ("[mqtt\n", ["invalid TOML"]),
        ('[mqtt]\ntls = true\nca_file = "/nonexistent/ca.crt"\n', ["[mqtt] ca_file", "no such file"]),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, body: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    assert "hunter2" not in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_secrets_from_env_or_credentials_never_in_repr(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret-cred\n")
    (creds / "mqtt-tls-key").write_text("KEY")
    cfg = load_config(None, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.mqtt.password == "s3cret-cred"
    assert cfg.mqtt.key_file == str(creds / "mqtt-tls-key")
    assert "s3cret" not in repr(cfg)
    cfg = load_config(None, env={"SONOGUIDE_MQTT_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.mqtt.password == "from-env"
    assert load_config(None, env={}).mqtt.password == ""


# --- every rule, at its edges (written from the mutation report: docs/testing.md) --------------------


@pytest.fixture
def fresh() -> ModuleType:
    """service/daemon/config.py imported anew. The schema — each key's default and check — is built
    while the module is imported, so a test of the ranges and choices must build it too: a daemon
    starting up does exactly this (and mutation testing then sees a broken check as broken)."""
    spec = importlib.util.spec_from_file_location(config_module.__name__, config_module.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not put in sys.modules: the rest of the suite keeps its own
    return module


def _error(module: Any, data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(module.ConfigError) as err:
        module.parse_config(data, "cfg.toml", env={} if env is None else env)
    return str(err.value)


def test_the_defaults_are_the_documented_example(fresh: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_documented_example())
    assert fresh.load_config(path, env={}) == dataclasses.replace(fresh.Config(), source=str(path))


@pytest.mark.parametrize(
    ("section", "key", "lo", "hi", "step"),
    [
        ("mqtt", "port", 1, 65535, 1),
        ("guidance", "good_quality", 0.0, 1.0, 0.001),
        ("pacs", "timeout_s", 0.5, 600.0, 0.01),
        ("worklist", "max_results", 1, 5000, 1),
        ("captures", "quota_mb", 0.01, 1e7, 0.001),
    ],
)
def test_a_range_takes_both_ends_and_refuses_what_is_past_them(
    fresh: ModuleType, section: str, key: str, lo: float, hi: float, step: float
) -> None:
    for value in (lo, hi):
        assert getattr(getattr(fresh.parse_config({section: {key: value}}, env={}), section), key) == value
    for value in (lo - step, hi + step):
        message = _error(fresh, {section: {key: value}})
        assert message == f"cfg.toml: [{section}] {key}: must be between {lo} and {hi}, got {value}"


def test_a_choice_takes_each_choice_and_names_them_all_when_refused(fresh: ModuleType) -> None:
    extra = {"realsense": "serial", "recording": "recording", "emulator": "socket"}
    for source in ("none", "realsense", "recording", "emulator"):
        body = {"source": source, **({extra[source]: "x"} if source in extra else {})}
        assert fresh.parse_config({"camera": body}, env={}).camera.source == source
    assert _error(fresh, {"camera": {"source": "kinect"}}) == (
        "cfg.toml: [camera] source: must be one of 'none', 'realsense', 'recording', 'emulator', got 'kinect'"
    )


@pytest.mark.parametrize(
    ("source", "needs"), [("realsense", "serial"), ("recording", "recording"), ("emulator", "socket")]
)
def test_each_camera_source_names_the_key_it_needs(source: str, needs: str) -> None:
    assert _error(config_module, {"camera": {"source": source}}) == (
        f'cfg.toml: [camera] {needs}: required when source = "{source}"'
    )
    parsed = parse_config({"camera": {"source": source, needs: "/dev/x"}}, env={}).camera
    assert getattr(parsed, needs) == "/dev/x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"device": {"id": 5}}, "[device] id: expected a string, got int"),
        ({"guidance": {"good_quality": "high"}}, "[guidance] good_quality: expected a number, got str"),
        ({"guidance": {"good_quality": True}}, "[guidance] good_quality: expected a number, got bool"),
        ({"mqtt": {"port": True}}, "[mqtt] port: expected an integer, got bool"),
        ({"model": {"providers": "cpu"}}, "[model] providers: expected a list of strings, got str"),
        ({"model": {"providers": []}}, "[model] providers: must name at least one execution provider"),
        ({"mqtt": {"host": "  "}}, "[mqtt] host: must not be empty"),
        ({"mqtt": 5}, "[mqtt] must be a table, got int"),
        (
            {"pacs": {"called_ae": "PACS "}},
            "[pacs] called_ae: must be a DICOM AE title (1-16 printable ASCII characters, no backslash), "
            "got 'PACS '",
        ),
        ({"pacs": {"retry_max_s": 1.0}}, "[pacs] retry_max_s: must not be less than retry_initial_s"),
        ({"pacs": {"retry_initial_s": 400.0}}, "[pacs] retry_max_s: must not be less than retry_initial_s"),
        (
            {"captures": {"uid_root": "1." + "2" * 39}},
            "[captures] uid_root: must be empty (UUID-derived UIDs, 2.25) or a registered UID root of at most "
            f"40 characters, got '1.{'2' * 39}'",
        ),
    ],
)
def test_each_mistake_gets_its_own_words(data: dict[str, Any], message: str) -> None:
    assert _error(config_module, data) == "cfg.toml: " + message


def test_ae_titles_and_uid_roots_at_their_limits() -> None:
    for title in ("A", "A" * 16, "MY PACS", "X-RAY_1"):
        assert parse_config({"pacs": {"called_ae": title}}, env={}).pacs.called_ae == title
    for title in ("A" * 17, "", " PACS", "PACS ", "A\\B", "PÄCS"):
        assert "[pacs] called_ae: must be a DICOM AE title" in _error(
            config_module, {"pacs": {"called_ae": title}}
        )
    for root in ("", "1.2.3", "1." + "2" * 38):  # the longest root: 40 characters
        assert parse_config({"captures": {"uid_root": root}}, env={}).captures.uid_root == root
    for root in ("1.2.abc", "1.02.3", "3.1", "1." + "2" * 39):
        assert "[captures] uid_root: must be empty" in _error(config_module, {"captures": {"uid_root": root}})
    both = {"retry_initial_s": 2.0, "retry_max_s": 2.0}  # equal is fine: no doubling, a steady retry
    assert parse_config({"pacs": both}, env={}).pacs.retry_max_s == 2.0


def test_unknown_names_list_what_is_known_and_only_password_gets_the_hint() -> None:
    assert _error(config_module, {"extra": {}}) == (
        "cfg.toml: unknown section [extra]; known: device, probe, camera, model, mqtt, auto, guidance, pacs, "
        "worklist, captures"
    )
    assert _error(config_module, {"mqtt": {"prot": 1}}) == (
        "cfg.toml: unknown key 'prot' in [mqtt]; known: host, port, username, tls, ca_file, cert_file, key_file"
    )
    assert _error(config_module, {"mqtt": {"password": "x"}}).endswith(
        "key_file (the password never goes in the file: see $SONOGUIDE_MQTT_PASSWORD)"
    )
    with pytest.raises(ConfigError, match=r"^<config>: unknown section \[extra\]"):
        parse_config({"extra": {}}, env={})  # no file named: the message says so


@pytest.mark.parametrize("section", ["mqtt", "pacs"])
def test_tls_files_must_exist_each_named(section: str, tmp_path: Path) -> None:
    files = {key: tmp_path / f"{key}.pem" for key in ("ca_file", "cert_file", "key_file")}
    for path in files.values():
        path.write_text("PEM")
    every = {key: str(path) for key, path in files.items()}
    parsed = getattr(parse_config({section: {"tls": True, **every}}, env={}), section)
    assert (parsed.ca_file, parsed.cert_file, parsed.key_file) == tuple(every.values())
    assert getattr(parse_config({section: {"tls": True}}, env={}), section).tls  # the system's CAs
    for key in files:
        missing = {**every, key: str(tmp_path / "gone.pem")}
        assert _error(config_module, {section: {"tls": True, **missing}}) == (
            f"cfg.toml: [{section}] {key}: no such file {str(tmp_path / 'gone.pem')!r} (needed with tls = true)"
        )
    assert not getattr(parse_config({section: {"tls": False, "ca_file": "/gone"}}, env={}), section).tls


def test_the_key_file_comes_from_the_file_unless_a_credential_holds_it(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()  # a credentials folder without the key: the file's key_file stays
    cfg = parse_config({"mqtt": {"key_file": "/etc/k.pem"}}, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.mqtt.key_file == "/etc/k.pem" and cfg.mqtt.password == ""
    assert parse_config({"mqtt": {"key_file": "/etc/k.pem"}}, env={}).mqtt.key_file == "/etc/k.pem"


def test_the_environment_is_the_process_one_unless_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SONOGUIDE_MQTT_PASSWORD", "from-process")
    assert parse_config({}).mqtt.password == "from-process"
    assert load_config(None).mqtt.password == "from-process"
    path = tmp_path / "c.toml"
    path.write_text("[mqtt]\nport = 1884\n")
    assert load_config(path, env={}).mqtt.password == ""  # the env given wins over the process's
    assert load_config(None, env={}).source == "<defaults>"


def test_a_file_that_cannot_be_read_or_is_not_text_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})  # a folder
    assert str(err.value) == f"{tmp_path}: cannot read config file: Is a directory"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[mqtt]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as err:
        load_config(binary, env={})
    assert str(err.value) == f"{binary}: not UTF-8 text"
