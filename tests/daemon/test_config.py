"""Config: the documented file parses, defaults make an empty file valid, every mistake names key and file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.daemon.config import Config, ConfigError, load_config

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
