"""The synchronous pipeline path on simulated time, the `run` command's start-up errors, the last will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from service.daemon.clock import SimClock
from service.daemon.config import AutoConfig
from service.daemon.inference import HeuristicModel
from service.daemon.pipeline import Pipeline
from service.seams import MemoryPublisher
from service.tools.local_broker import LocalBroker
from sim.truth import ground_truth
from sim.types import ImagingSettings
from tests.cli import run_sonoguide
from tests.service_bench import Recorder, SimTimeProbe

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_step_on_simulated_clock_converges_gain_without_threads() -> None:
    probe = SimTimeProbe(seed=2, initial={"depth_mm": 120.0})  # the simulator, no link, no threads
    best = probe_truth_best_gain(probe)
    probe.set_param("gain_db", round(best - 15))
    clock = SimClock()
    pub = MemoryPublisher()
    pipe = Pipeline(probe, HeuristicModel(), pub, clock, AutoConfig(depth=False))
    assert pipe.limits.gain_step_db == 1.0 and pipe.limits.depth_steps_mm[0] == 60.0  # from capabilities
    for _ in range(150):  # 5 simulated seconds at 30 fps, in a few real seconds
        message, _ = pipe.step(probe.frame(clock.now()))
        clock.advance(1 / 30)
    assert abs(probe.params.gain_db - best) <= 3.0, (probe.params.gain_db, best)
    assert 1 <= [e["kind"] for e in pub.events].count("auto_change") <= 4  # a coarse step, a fine touch
    assert len(pub.guidance) == 150 and message["t"]["published"] >= message["t"]["received"]
    assert pub.retained["settings"]["gain_db"] == probe.params.gain_db


def probe_truth_best_gain(probe: SimTimeProbe) -> float:
    p = probe.params
    settings = ImagingSettings(p.gain_db, p.depth_mm, p.freq_mhz)
    return ground_truth(probe.source.phantom, probe.source.phantom.target_pose, settings).best_gain_db


_run_cli = run_sonoguide


def test_run_rejects_a_bad_config_naming_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[auto]\nmanual_pause_s = -1\n")
    out = _run_cli("run", "--config", str(cfg))
    assert out.returncode == 2
    assert str(cfg) in out.stderr and "[auto] manual_pause_s" in out.stderr
    out = _run_cli("run", "--help")
    assert out.returncode == 0 and "--config" in out.stdout


def test_run_refuses_a_tampered_model_in_plain_words(tmp_path: Path) -> None:
    import shutil

    from service.daemon.onnx_model import shipped_model_dir

    tampered = tmp_path / "model"
    shutil.copytree(shipped_model_dir(), tampered)
    onnx_file = next(tampered.glob("*.int8.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[probe]\nport = "{tmp_path}/ttyACM-missing"\n[model]\ndir = "{tampered}"\n')
    out = _run_cli("run", "--config", str(cfg))
    assert out.returncode == 1 and "sonoguide: model:" in out.stderr, out.stderr
    assert onnx_file.name in out.stderr and "Traceback" not in out.stderr


def test_run_without_the_probe_comes_up_waiting_and_connects_when_it_is_plugged_in(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """`sonoguide run` (the shipped model) with the probe absent; then the emulator on a pty appears
    behind the configured (udev-style) link path."""
    from firmware_bridge.emulator.device import ProbeEmulator
    from firmware_bridge.ptyport import PtyPair

    device = f"absent-{os.getpid()}"
    port = tmp_path / "sonoguide-probe"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[device]\nid = "{device}"\n[probe]\nport = "{port}"\n[mqtt]\nport = {broker.port}\n')
    rec = Recorder(broker.port, device)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "--config", str(cfg)],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pty = PtyPair()
    emulator = None
    try:

        def probe_state() -> str:
            status = rec.of("status")
            return str(status[-1].payload["probe"]["state"]) if status else ""

        assert rec.wait_for(lambda: probe_state() == "absent", 60), proc.poll()
        assert rec.of("available")[-1].payload == "online"
        assert "waiting for the probe" in rec.of("status")[-1].payload["summary"]
        assert proc.poll() is None  # still running: not exit 1 for systemd to give up on
        emulator = ProbeEmulator(pty.device_fd).start()
        port.symlink_to(pty.host_path)  # the probe is plugged in
        assert rec.wait_for(lambda: probe_state() == "ok", 30), probe_state()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if emulator is not None:
            emulator.stop()
        pty.close()
        rec.close()


def test_last_will_offline_when_the_daemon_vanishes(broker: LocalBroker) -> None:
    device = f"will-{os.getpid()}"
    script = textwrap.dedent(f"""
        import time
        from service.daemon.config import parse_config
        from service.mqtt.client import MqttApi
        cfg = parse_config({{"mqtt": {{"port": {broker.port}}}}}, env={{}})
        api = MqttApi("{device}", cfg.mqtt).start()
        assert api.wait_connected(5)
        print("connected", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        rec = Recorder(broker.port, device)
        assert rec.wait_for(lambda: [m.payload for m in rec.of("available")] == ["online"], 5)
        os.kill(proc.pid, signal.SIGKILL)
        assert rec.wait_for(lambda: rec.of("available")[-1].payload == "offline", 30)
        rec.close()
    finally:
        proc.kill()
        proc.wait()


def test_username_and_password_from_the_environment(start_broker, tmp_path: Path) -> None:
    import shutil

    from service.daemon.config import parse_config
    from service.mqtt.client import MqttApi

    passwd = tmp_path / "passwd"
    subprocess.run(
        [shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", "-c", str(passwd), "probe-01", "pa55-word"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    passwd.chmod(0o644)
    broker = start_broker(
        config=f"listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n", name="auth"
    )
    good = parse_config(
        {"mqtt": {"port": broker.port, "username": "probe-01"}}, env={"SONOGUIDE_MQTT_PASSWORD": "pa55-word"}
    )
    bad = parse_config(
        {"mqtt": {"port": broker.port, "username": "probe-01"}}, env={"SONOGUIDE_MQTT_PASSWORD": "nope"}
    )
    ok_api = MqttApi("auth-ok", good.mqtt).start()
    bad_api = MqttApi("auth-bad", bad.mqtt).start()
    try:
        assert ok_api.wait_connected(5)
        assert not bad_api.wait_connected(1.5)
    finally:
        ok_api.stop()
        bad_api.stop()


def test_tls_with_a_private_ca(start_broker, tmp_path: Path) -> None:
    from service.daemon.config import parse_config
    from service.mqtt.client import MqttApi

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=sonoguide test CA")  # fmt: skip
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    broker = start_broker(
        config=(
            "listener {port} 127.0.0.1\nallow_anonymous true\n"
            f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n"
        ),
        name="tls",
    )
    cfg = parse_config(
        {"mqtt": {"port": broker.port, "tls": True, "ca_file": str(tmp_path / "ca.crt")}}, env={}
    )
    api = MqttApi("tls-ok", cfg.mqtt).start()
    plain = MqttApi("tls-plain", parse_config({"mqtt": {"port": broker.port}}, env={}).mqtt).start()
    try:
        assert api.wait_connected(5), broker.log_text()
        assert not plain.wait_connected(1.0)  # the listener speaks TLS only
    finally:
        api.stop()
        plain.stop()
