"""`sonoguide doctor`: on a machine with none of the pieces every check fails in plain words; with the
real pieces (pty, broker, ONNX Runtime session, credential files) the checks pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from firmware_bridge.ptyport import PtyPair
from service.tools.doctor_checks import (
    check_broker,
    check_camera,
    check_credentials,
    check_model_files,
    check_model_runtime,
    check_probe_port,
)
from service.tools.local_broker import LocalBroker, free_port
from tests.cli import run_sonoguide

REPO = Path(__file__).resolve().parents[2]


def _doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_sonoguide("doctor", *args, env=env)


def test_doctor_names_every_missing_piece_in_plain_words(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[probe]\nport = "{tmp_path}/ttyACM-missing"\n'
        '[camera]\nsource = "realsense"\nserial = "123456789012"\n'
        f'[model]\ndir = "{tmp_path}/no-model"\n'
        f'[mqtt]\nport = {free_port()}\nusername = "sonoguide"\n'
        f'[pacs]\nhost = "127.0.0.1"\nport = {free_port()}\n'
    )
    (tmp_path / "creds").mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in ("SONOGUIDE_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY")
    }
    done = _doctor("--config", str(config), "--credentials-dir", str(tmp_path / "creds"), "--json", env=env)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    expected_words = {
        "probe port": "does not exist: the probe is not connected",
        "camera": "no RealSense camera found",
        "model": "does not exist",
        "model runtime": "no model to load",
        "credentials": "no password was found",
        "broker": "cannot reach the MQTT broker",
        "pacs": "no association (not listening",
    }
    assert by_name["config"]["ok"] is True
    for name, words in expected_words.items():
        check = by_name[name]
        assert check["ok"] is False and words in check["detail"], check
        assert check["fix"], f"{name} fails without saying what to do"

    human = _doctor("--config", str(config), "--credentials-dir", str(tmp_path / "creds"), env=env)
    assert human.returncode == 1
    fail_lines = [line for line in human.stdout.splitlines() if line.startswith("[FAIL]")]
    assert [line.split(":")[0][7:] for line in fail_lines] == list(expected_words)
    assert (
        "4 of 11 checks passed" in human.stdout
    )  # config, model keys and store (not used with [model] dir), worklist (none)


def test_doctor_without_a_config_file_says_so(tmp_path: Path) -> None:
    done = _doctor("--config", str(tmp_path / "absent.toml"), "--json", "--timeout", "0.5")
    config_check = json.loads(done.stdout)["checks"][0]
    assert done.returncode == 1
    assert config_check["name"] == "config" and not config_check["ok"]
    assert "no config file" in config_check["detail"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nport = 1\n")
    done = _doctor("--config", str(bad), "--json", "--timeout", "0.5")
    assert "invalid TOML" in json.loads(done.stdout)["checks"][0]["detail"]


def test_broker_check_passes_against_a_real_broker(broker: LocalBroker) -> None:
    result = check_broker("127.0.0.1", broker.port, timeout=5)
    assert result.ok, result
    assert f"127.0.0.1:{broker.port}" in result.detail


def test_broker_check_uses_the_credentials_and_reports_refusal(
    tmp_path: Path, start_broker: Callable[..., LocalBroker]
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "sonoguide", "pw-1"], check=True)
    secured = start_broker(
        config=f"listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n", name="secured"
    )
    creds = tmp_path / "creds"
    creds.mkdir()
    secret = creds / "mqtt-password"
    secret.write_text("pw-1\n")
    secret.chmod(0o644)
    result, password = check_credentials("sonoguide", creds, None)
    assert not result.ok and "can be read by other users" in result.detail and "chmod 600" in result.fix
    secret.chmod(0o600)
    result, password = check_credentials("sonoguide", creds, None)
    assert result.ok and password == "pw-1" and "pw-1" not in result.detail
    assert check_broker("127.0.0.1", secured.port, "sonoguide", password, timeout=5).ok
    refused = check_broker("127.0.0.1", secured.port, "sonoguide", "wrong", timeout=5)
    assert not refused.ok and "refused" in refused.detail and "password" in refused.fix
    anonymous = check_broker("127.0.0.1", secured.port, timeout=5)
    assert not anonymous.ok


def test_probe_port_check_identifies_the_reference_emulator(pty_pair: PtyPair) -> None:
    from firmware_bridge.emulator.device import Faults, ProbeEmulator

    emulator = ProbeEmulator(pty_pair.device_fd).start()
    try:
        result = check_probe_port(pty_pair.host_path)
    finally:
        emulator.stop()
    assert result.ok, result
    assert "serial" in result.detail and "protocol 1." in result.detail

    old_firmware = PtyPair()
    emulator = ProbeEmulator(old_firmware.device_fd, faults=Faults(protocol_major=2)).start()
    try:
        refused = check_probe_port(old_firmware.host_path)
    finally:
        emulator.stop()
        old_firmware.close()
    assert not refused.ok and "speaks protocol 2." in refused.detail and "firmware" in refused.fix


def test_probe_port_check_on_a_real_pty(pty_pair: PtyPair, tmp_path: Path) -> None:
    silent = check_probe_port(pty_pair.host_path)  # opens, but nothing answers HELLO
    assert not silent.ok and "no probe answers" in silent.detail, silent
    with serial.Serial(pty_pair.host_path, exclusive=True):
        busy = check_probe_port(pty_pair.host_path)
    assert not busy.ok and "in use by another program" in busy.detail
    not_a_tty = tmp_path / "file"
    not_a_tty.write_text("")
    assert "not a serial device" in check_probe_port(str(not_a_tty)).detail
    dangling = tmp_path / "sonoguide-probe"
    dangling.symlink_to(tmp_path / "ttyACM9")
    assert "its device is gone" in check_probe_port(str(dangling)).detail


def test_camera_check_on_recordings(tmp_path: Path) -> None:
    assert check_camera("none").ok
    assert "does not exist" in check_camera("recording", recording=str(tmp_path / "x.db3")).detail
    garbage = tmp_path / "garbage.db3"
    garbage.write_bytes(b"not a recording" * 10)
    result = check_camera("recording", recording=str(garbage))
    assert not result.ok and "cannot be played back" in result.detail
    assert "unknown camera source" in check_camera("kinect").detail


# --- a real (tiny) ONNX model, encoded by hand so the test needs no `onnx` package ------------------


def _model_folder(root: Path) -> Path:
    """A copy of the shipped model version under ``root/<name>/<version>``."""
    from service.daemon.onnx_model import shipped_model_dir

    shipped = shipped_model_dir()
    folder = root / shipped.parent.name / shipped.name
    shutil.copytree(shipped, folder)
    return folder


def test_model_checks_with_a_real_onnx_runtime_session(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "models")
    assert check_model_files(str(folder), tmp_path).ok
    shipped = check_model_files("", tmp_path / "models")  # "" = the newest shipped model
    assert shipped.ok and str(folder) in shipped.detail
    model_file = folder / "model.int8.onnx"
    runtime = check_model_runtime(model_file, ["tensorrt", "cuda", "cpu"])
    assert runtime.ok and "runs on" in runtime.detail, runtime
    assert not check_model_runtime(model_file, ["npu"]).ok

    (folder / "MODEL_CARD.md").write_text("edited\n")
    damaged = check_model_files(str(folder), tmp_path)
    assert not damaged.ok and "MODEL_CARD.md does not match its sha256" in damaged.detail, damaged
    model_file.write_bytes(b"\x00garbage")
    broken = check_model_runtime(model_file, ["cpu"])
    assert not broken.ok and "cannot load model.int8.onnx" in broken.detail
    (folder / "manifest.json").unlink()
    assert "manifest.json is missing" in check_model_files(str(folder), tmp_path).detail
    nothing = check_model_files("", tmp_path / "empty")
    assert not nothing.ok and "no model is installed" in nothing.detail


def test_model_store_and_keys_checks(tmp_path: Path) -> None:
    from service.model_store.keys import REVOKED_FILE
    from service.tools.doctor_checks import check_model_keys, check_model_store
    from tests.model_bundles import Vendor, golden_loader, make_store

    store_dir, keys = tmp_path / "store", tmp_path / "trusted"
    missing = check_model_store(str(store_dir), str(keys))
    assert not missing.ok and "does not exist" in missing.detail and missing.fix
    none = check_model_keys(str(keys))
    assert none.ok and "updates will be refused" in none.detail and none.fix
    vendor = Vendor(tmp_path)
    store = make_store(store_dir)
    store.install(vendor.bundle(tmp_path / "1.6.0.sgb", "1.6.0"), vendor.trust, golden_loader)
    store.activate("1.6.0", vendor.trust)
    good = check_model_store(str(store_dir), str(keys))
    assert good.ok and "active 1.6.0" in good.detail and "GB free" in good.detail, good
    assert vendor.key.key_id in check_model_keys(str(keys)).detail
    card = store.versions / "1.6.0" / "model" / "MODEL_CARD.md"
    card.write_text("edited\n")
    damaged = check_model_store(str(store_dir), str(keys))
    assert not damaged.ok and "MODEL_CARD.md does not match its signed sha256" in damaged.detail, damaged
    (keys / REVOKED_FILE).write_text(vendor.key.key_id + "\n")
    revoked = check_model_keys(str(keys))
    assert "all expired or revoked" in revoked.detail and vendor.key.key_id in revoked.detail
    assert check_model_store(str(store_dir), str(keys), pinned_dir="/opt/x").ok


def test_doctor_next_to_a_running_daemon_asks_it_and_leaves_its_port_alone(broker: LocalBroker) -> None:
    """The real daemon on the emulator (pty) and mosquitto; doctor's checks run beside it."""
    from service.commands.doctor import config_sections, run_checks
    from tests.daemon.test_daemon import Bench
    from tests.service_bench import EmulatedProbe

    probe = EmulatedProbe()
    bench = Bench(broker, probe)
    try:
        rec = bench.recorder
        assert rec.wait_for(lambda: any(m.payload["probe"]["state"] == "ok" for m in rec.of("status")), 10)
        with pytest.raises(serial.SerialException):  # the daemon holds its port exclusively
            serial.Serial(probe.pty.host_path, exclusive=True)
        hellos_before = probe.link.stats().get("connects", None), probe.link.stats().get("reconnects", 0)
        config = config_sections(bench.config)
        config["probe"]["port"] = probe.pty.host_path
        results = {r.name: r for r in run_checks(config, None, None, timeout=5)}
        probe_result = results["probe port"]
        assert probe_result.ok, probe_result.detail
        assert "held by the running sonoguide service" in probe_result.detail
        assert "probe ok" in probe_result.detail
        t = time.monotonic()
        assert rec.wait_for(lambda: len(rec.of("guidance", since=t)) > 10, 10)  # the link never dropped
        after = probe.link.stats().get("connects", None), probe.link.stats().get("reconnects", 0)
        assert after == hellos_before and probe.link.connected
    finally:
        bench.close()
