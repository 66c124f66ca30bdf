"""`sonoguide captures list|send|export`, `sonoguide exam` and doctor's PACS check, run as a user does
(subprocesses) against a real Orthanc; exported files checked with dciodvfy."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pydicom

from service.daemon.captures import CaptureService
from service.daemon.config import parse_config
from service.tools.doctor_checks import check_dicom_peer
from service.tools.local_broker import free_port
from service.tools.local_pacs import LocalPacs
from tests.cli import run_sonoguide
from tests.daemon.test_captures import NAME, Events, dciodvfy, wait_for


def _device_with_captures(folder: Path, patient: str, count: int) -> list[np.ndarray]:
    """Captures written by the daemon's own writer, with no PACS configured (all stay unsent)."""
    config = parse_config({"captures": {"dir": str(folder)}}, "<test>", env={})
    events = Events()
    svc = CaptureService(config.captures, config.pacs, "cli-dev", events).start()
    svc.exams.start({"patient_id": patient, "patient_name": NAME})
    images = [np.full((64, 80), 10 * i, np.uint8) for i in range(count)]
    try:
        for i, image in enumerate(images):
            svc.submit(image, i, {"depth_mm": 80.0}, "manual", "cli test")
        assert wait_for(lambda: len(events.of("capture_saved")) == count, 10)
    finally:
        svc.stop()
    return images


def test_list_send_and_export(orthanc: LocalPacs, tmp_path: Path) -> None:
    folder, patient = tmp_path / "captures", f"C-{uuid.uuid4().hex[:8]}"
    images = _device_with_captures(folder, patient, 3)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[captures]\ndir = "{folder}"\nretention_days = 1.0\n'
        f'[pacs]\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\ncalled_ae = "{orthanc.aet}"\n'
    )
    listed = run_sonoguide("captures", "--config", str(config), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert len(body["captures"]["outbox"]) == 3 and {c["patient_id"] for c in body["captures"]["outbox"]} == {
        patient
    }

    sent = run_sonoguide("captures", "--config", str(config), "send")
    assert sent.returncode == 0 and "3 of 3 capture(s) stored" in sent.stdout, sent.stderr
    assert len(orthanc.find({"PatientID": patient})) == 3
    plain = run_sonoguide("captures", "--config", str(config), "list")
    assert "0 unsent" in plain.stdout and "3 sent (kept)" in plain.stdout and patient in plain.stdout

    out = tmp_path / "usb"
    export = run_sonoguide("captures", "--config", str(config), "export", str(out), "--deidentify")
    assert export.returncode == 0 and "3 capture(s) exported" in export.stdout, export.stderr
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    pixels = []
    for path in files:
        assert dciodvfy(path) == []
        ds = pydicom.dcmread(path)
        assert (
            ds.PatientIdentityRemoved == "YES" and ds.PatientID != patient and "Ø" not in str(ds.PatientName)
        )
        pixels.append(ds.pixel_array)
    assert sorted(int(p[0, 0]) for p in pixels) == sorted(int(i[0, 0]) for i in images)
    assert len(list((folder / "sent").glob("*.dcm"))) == 3  # export copies, never moves

    down = tmp_path / "down.toml"
    down.write_text(f'[captures]\ndir = "{folder}"\n[pacs]\nhost = "127.0.0.1"\nport = {free_port()}\n')
    _device_with_captures(folder, patient, 1)
    failed = run_sonoguide("captures", "--config", str(down), "send")
    assert (
        failed.returncode == 1
        and "not listening" in failed.stderr
        and "1 capture(s) still queued" in failed.stderr
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[captures]\nquota = 5\n")
    refused = run_sonoguide("captures", "--config", str(bad), "list")
    assert refused.returncode == 2 and "unknown key 'quota' in [captures]" in refused.stderr


def test_doctor_checks_the_pacs_with_c_echo(orthanc: LocalPacs) -> None:
    ok = check_dicom_peer("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.aet, "SONOGUIDE")
    assert ok.ok and "C-ECHO" in ok.detail
    wrong = check_dicom_peer("pacs", "127.0.0.1", orthanc.dicom_port, "NOTTHERE", "SONOGUIDE")
    assert not wrong.ok and "refused the association" in wrong.detail and "IPAddressAllow" in wrong.fix
    assert check_dicom_peer("pacs", "", 104, "X", "Y").ok  # none configured: captures stay on the device


def test_exam_command_reaches_the_daemon_and_reports_refusals(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.daemon.app import Daemon
    from service.daemon.inference import HeuristicModel
    from tests.service_bench import EmulatedProbe

    device = f"exam-{uuid.uuid4().hex[:6]}"
    config = parse_config(
        {"device": {"id": device}, "mqtt": {"port": broker.port}, "captures": {"dir": str(tmp_path / "c")}},
        "<test>",
        env={},
    )
    captures = CaptureService(config.captures, config.pacs, device, event=lambda *a, **k: None)
    probe = EmulatedProbe()
    daemon = Daemon(config, probe.link, HeuristicModel(), captures=captures).start()
    try:
        assert daemon.mqtt.wait_connected(5)
        common = ("exam", "--broker", f"mqtt://127.0.0.1:{broker.port}", "--device", device)
        started = run_sonoguide(*common, "start", "--patient-id", "X-1", "--patient-name", NAME)
        assert started.returncode == 0, started.stderr + started.stdout
        assert json.loads(started.stdout)["result"]["patient_id"] == "X-1" and captures.exams.open
        assert captures.exams.current().patient.name == NAME
        bad = run_sonoguide(*common, "start", "--patient-id", "X-2", "--sex", "Q")
        assert bad.returncode == 1 and "sex" in json.loads(bad.stdout)["error"]
        assert captures.exams.current().patient.id == "X-1"  # a refused exam changes nothing
        ended = run_sonoguide(*common, "end")
        assert ended.returncode == 0 and not captures.exams.open
    finally:
        daemon.stop()
        probe.close()
