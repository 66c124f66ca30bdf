"""The systemd unit, udev rules and install script: installed into a temporary root, verified with the
real systemd-analyze, and installed again to show the install is idempotent and keeps edited configs."""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "sonoguide.service"
MAX_EXPOSURE = 2.0


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(REPO / "systemd" / "install.sh"),
            "--root",
            str(root),
            "--link",
            "--python",
            sys.executable,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root -> (mode, sha256 of the content or of the link target)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = (0, str(p.readlink()))
        elif p.is_file():
            snap[rel] = (stat.S_IMODE(p.stat().st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            snap[rel] = (stat.S_IMODE(p.stat().st_mode), "dir")
    return snap


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    done = _install(root)
    assert done.returncode == 0, done.stderr + done.stdout
    return root


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail(
            "systemd-analyze is missing: run scripts/ensure-system-deps.sh (Debian package 'systemd')"
        )
    return found


def test_install_into_a_root_creates_user_dirs_venv_unit_rules_and_config(installed: Path) -> None:
    r = installed
    passwd = (r / "etc/passwd").read_text()
    assert re.search(r"^sonoguide:x:\d+:\d+:[^:]*:/var/lib/sonoguide:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^video:x:\d+:.*\bsonoguide\b", (r / "etc/group").read_text(), re.M)
    modes = {
        "etc/credstore": 0o700,
        "var/lib/sonoguide": 0o750,
        "var/lib/sonoguide/trt-cache": 0o750,
        "var/lib/sonoguide/models": 0o750,
        "etc/sonoguide/model-keys": 0o755,
        "etc/sonoguide/config.toml": 0o644,
        "etc/mosquitto/sonoguide/passwd": 0o600,
        "opt/sonoguide/venv/bin/sonoguide": 0o755,
    }
    for rel, mode in modes.items():
        assert stat.S_IMODE((r / rel).stat().st_mode) == mode, rel
    for rel, source in [
        ("etc/systemd/system/sonoguide.service", "systemd/sonoguide.service"),
        ("etc/udev/rules.d/99-sonoguide.rules", "systemd/99-sonoguide.rules"),
        ("etc/sonoguide/config.toml", "systemd/config.toml"),
        ("etc/mosquitto/conf.d/sonoguide.conf", "systemd/mosquitto/sonoguide-local.conf"),
        ("etc/mosquitto/sonoguide/acl", "systemd/mosquitto/sonoguide.acl"),
    ]:
        assert (r / rel).read_bytes() == (REPO / source).read_bytes(), rel
    # The linked venv runs this source tree; the script names the path the service will see.
    script = r / "opt/sonoguide/venv/bin/sonoguide"
    assert script.read_text().splitlines()[0] == "#!/opt/sonoguide/venv/bin/python"
    version = subprocess.run(
        [str(r / "opt/sonoguide/venv/bin/python"), str(script), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("sonoguide "), version.stderr


def test_the_default_config_is_the_contract_and_doctor_reads_it(installed: Path) -> None:
    import dataclasses

    from service.daemon.config import load_config

    installed_config = installed / "etc/sonoguide/config.toml"
    # Every value the installed file sets is the daemon's own default (doctor reads it the same way).
    assert load_config(installed_config, env={}) == dataclasses.replace(
        load_config(None, env={}), source=str(installed_config)
    )
    arch = (REPO / "docs/architecture.md").read_text()
    contract = arch.split("## Config file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    shipped = (REPO / "systemd/config.toml").read_text()
    assert contract in shipped, "systemd/config.toml drifted from the contract in docs/architecture.md"


def test_install_twice_is_idempotent_and_never_overwrites_an_edited_config(tmp_path: Path) -> None:
    assert _install(tmp_path).returncode == 0
    first = _snapshot(tmp_path)
    again = _install(tmp_path)
    assert again.returncode == 0, again.stderr
    assert _snapshot(tmp_path) == first
    assert "installed /etc" not in again.stdout  # nothing to do the second time

    config = tmp_path / "etc/sonoguide/config.toml"
    edited = config.read_text().replace('id = "sonoguide-01"', 'id = "ward-3"')
    config.write_text(edited)
    third = _install(tmp_path)
    assert third.returncode == 0
    assert config.read_text() == edited
    new = tmp_path / "etc/sonoguide/config.toml.new"
    assert new.read_bytes() == (REPO / "systemd/config.toml").read_bytes()
    assert "kept your /etc/sonoguide/config.toml" in third.stdout and "config.toml.new" in third.stdout
    assert [ln.split(":")[0] for ln in (tmp_path / "etc/passwd").read_text().splitlines()] == ["sonoguide"]


def test_install_rejects_unknown_options(tmp_path: Path) -> None:
    done = _install(tmp_path, "--frobnicate")
    assert done.returncode == 2 and "unknown option '--frobnicate'" in done.stderr
    assert not (tmp_path / "etc").exists()


def _analysis_root(installed: Path, tmp_path: Path) -> Path:
    """The installed tree plus the host's systemd units (targets the unit depends on)."""
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    # verify checks that ExecStart's program exists and is executable inside the root
    assert (root / "opt/sonoguide/venv/bin/sonoguide").stat().st_mode & 0o111
    return root


def test_systemd_analyze_verify_is_clean(installed: Path, tmp_path: Path) -> None:
    root = _analysis_root(installed, tmp_path)
    cmd = [_systemd_analyze(), "verify", "--man=no", f"--root={root}", "sonoguide.service"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr

    # The check can fail: a misspelt directive is reported.
    unit = root / "etc/systemd/system/sonoguide.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    broken = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "Unknown key 'WatchdogSecs'" in broken.stdout + broken.stderr


def test_security_exposure_is_at_most_two(capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for sonoguide\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=yes sonoguide.service: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_unit_has_the_required_lifecycle_and_access_settings() -> None:
    unit = UNIT.read_text()
    settings: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["Restart"] == ["on-failure"]
    assert settings["WatchdogSec"] and settings["StartLimitBurst"] and settings["StartLimitIntervalSec"]
    assert settings["User"] == ["sonoguide"] and settings["StateDirectory"] == ["sonoguide"]
    assert settings["ConfigurationDirectory"] == ["sonoguide"]
    # Model updates: the store under the state directory is writable, the keys never are.
    assert settings["ProtectSystem"] == ["strict"] and settings["ReadOnlyPaths"] == ["/etc/sonoguide"]
    assert "ReadWritePaths" not in settings
    assert set(settings["LoadCredential"]) == {"mqtt-password", "mqtt-tls-key"}
    assert settings["DevicePolicy"] == ["closed"]
    assert {"char-ttyACM rw", "char-usb_device rw"} <= set(settings["DeviceAllow"])


def test_udev_rules_name_the_probe_and_open_the_realsense_to_the_service_group() -> None:
    rules = [
        line
        for line in (REPO / "systemd/99-sonoguide.rules").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pair = re.compile(r'^([A-Z_]+(?:\{[^}]+\})?)(==|!=|\+=|:=|=)"([^"]*)"$')
    for rule in rules:
        for item in rule.split(", "):
            assert pair.match(item), f"malformed udev key {item!r} in {rule!r}"
    probe = [r for r in rules if 'SYMLINK+="sonoguide-probe"' in r]
    assert len(probe) == 1 and 'SUBSYSTEM=="tty"' in probe[0] and 'GROUP="sonoguide"' in probe[0]
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in probe[0]
    assert 'TAG+="systemd"' in probe[0]  # dev-sonoguide\x2dprobe.device: the probe's presence in systemd
    unit = (REPO / "systemd/sonoguide.service").read_text()
    # ... which the service does not bind to: it comes up without the probe and waits for it
    assert not re.search(r"^(BindsTo|Requires|After)=.*dev-sonoguide", unit, re.M)
    config = (REPO / "systemd/config.toml").read_text()
    assert re.search(r'^port = "/dev/sonoguide-probe"', config, re.M), (
        "the shipped config uses the stable name"
    )
    realsense = [r for r in rules if 'ATTRS{idVendor}=="8086"' in r and "MODE=" in r]
    assert realsense and all('GROUP="sonoguide"' in r and 'MODE="0660"' in r for r in realsense)
    assert "PLACEHOLDER" in (REPO / "systemd/99-sonoguide.rules").read_text()
