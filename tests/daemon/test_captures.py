"""Captures as DICOM on the device and store-and-forward to a real PACS (docs/captures.md).

Real pieces: pydicom writes the files, dciodvfy (Debian dicom3tools) checks every one, pynetdicom
sends them to a real Orthanc (Debian orthanc) started on free loopback ports, and what arrived is read
back through Orthanc's REST API.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from service.daemon.capture_dicom import (
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    Capture,
    CaptureError,
    Equipment,
    build_capture,
    deidentify,
)
from service.daemon.capture_exam import ExamBook, ExamError, validate_exam
from service.daemon.capture_store import CaptureStore, QuotaFullError
from service.daemon.captures import CaptureService
from service.daemon.config import parse_config
from service.daemon.pacs_client import PacsAddress, PacsUnavailableError, echo
from service.tools.local_broker import free_port
from service.tools.local_pacs import LocalPacs

NAME = "Müller^Jörg"  # needs ISO_IR 192


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (warnings are not errors)."""
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy missing: scripts/ensure-system-deps.sh installs dicom3tools"
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def frame(seed: int = 0, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class Events:
    """The event sink: the same (kind, message, **fields) calls ProbeState.event gets."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str, **fields: Any) -> None:
        with self._lock:
            self.items.append({"kind": kind, "message": message, **fields})

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.items if e["kind"] == kind]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def service(
    folder: Path, pacs: LocalPacs | None, events: Events, port: int | None = None, **captures: Any
) -> CaptureService:
    sections: dict[str, Any] = {"captures": {"dir": str(folder), **captures}}
    if pacs is not None or port is not None:
        sections["pacs"] = {
            "host": "127.0.0.1",
            "port": port or (pacs.dicom_port if pacs else 104),
            "called_ae": pacs.aet if pacs else "TESTPACS",
            "timeout_s": 5.0,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
        }
    config = parse_config(sections, "<test>", env={})
    return CaptureService(config.captures, config.pacs, "dev-test", events, probe_description="EMU, serial 1")


PARAMS = {"gain_db": 48.0, "depth_mm": 120.0, "freq_mhz": 3.5, "tgc_db": [0.0, 2.0, 4.0, 6.0]}


# --- the files --------------------------------------------------------------------------------------


def test_every_capture_is_valid_dicom_with_the_frame_intact(tmp_path: Path) -> None:
    events = Events()
    svc = service(tmp_path / "cap", None, events)
    image_auto, image_manual = frame(1), frame(2, (120, 160))
    svc.exams.start({"patient_id": "P-001", "patient_name": NAME, "birth_date": "19800131", "sex": "M",
                     "accession_number": "ACC42", "study_description": "Abdomen, Leber"})  # fmt: skip
    model = type("M", (), {"name": "sonoguide-view", "version": "1.3.0"})()
    svc.start()
    try:
        assert svc.submit(image_auto, 11, PARAMS, "auto", "quality held", quality=0.91, model=model)
        assert svc.submit(image_manual, 12, PARAMS, "manual", "on request")
        svc.exams.end()
        assert svc.submit(image_auto, 13, {}, "probe", "probe button")  # no exam: unassigned, no settings
        assert wait_for(lambda: len(events.of("capture_saved")) == 3, 10), events.items
    finally:
        svc.stop()
    files = svc.store.pending()
    assert len(files) == 3 and not events.of("capture_failed")
    for path in files:
        assert dciodvfy(path) == [], path
    a, m, u = (pydicom.dcmread(p) for p in files)
    assert np.array_equal(a.pixel_array, image_auto) and np.array_equal(m.pixel_array, image_manual)
    assert np.array_equal(u.pixel_array, image_auto)
    # who, which study, what, how, why
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1" and a.Modality == "US"
    assert str(a.PatientName) == NAME and a.SpecificCharacterSet == "ISO_IR 192" and a.PatientID == "P-001"
    assert a.StudyInstanceUID == m.StudyInstanceUID != u.StudyInstanceUID
    assert len({a.SOPInstanceUID, m.SOPInstanceUID, u.SOPInstanceUID}) == 3
    assert all(x.SOPInstanceUID.startswith("2.25.") and len(x.SOPInstanceUID) <= 64 for x in (a, m, u))
    assert a.AccessionNumber == "ACC42" and a.PatientBirthDate == "19800131"
    assert a.Manufacturer == "sonoguide" and a.DeviceSerialNumber == "dev-test"
    assert a.AcquisitionDateTime.startswith(datetime.now().strftime("%Y%m%d"))
    assert a.DepthOfScanField == 120
    region = a.SequenceOfUltrasoundRegions[0]
    assert region.TransducerFrequency == 3500 and region.PhysicalDeltaY == pytest.approx(12.0 / 96)
    block = a.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert float(block[0x01].value) == 48.0 and [float(v) for v in block[0x02].value] == PARAMS["tgc_db"]
    assert (
        block[0x03].value == "AUTO" and block[0x05].value == "sonoguide-view" and block[0x06].value == "1.3.0"
    )
    assert m.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[0x03].value == "MANUAL"
    assert "sonoguide-view 1.3.0" in a.ImageComments and "gain 48 dB" in a.ImageComments
    assert u.PatientID == "UNASSIGNED" and "unassigned" in u.SeriesDescription
    assert a.InstanceNumber < m.InstanceNumber < u.InstanceNumber

    # de-identified copy (teaching/export): still valid, no identity, same pixels, consistent UIDs
    anon = deidentify(a, salt="site")
    out = tmp_path / "anon.dcm"
    anon.save_as(out, enforce_file_format=True)
    assert dciodvfy(out) == []
    back = pydicom.dcmread(out)
    assert back.PatientIdentityRemoved == "YES" and "Müller" not in str(back.PatientName)
    assert back.PatientID != "P-001" and back.get("PatientBirthDate", "") == "" and back.AccessionNumber == ""
    assert back.StudyInstanceUID != a.StudyInstanceUID
    assert back.StudyInstanceUID == deidentify(m, salt="site").StudyInstanceUID
    assert np.array_equal(back.pixel_array, image_auto)
    assert not any(t.is_private for t in back)


def test_a_frame_that_is_not_an_image_is_refused_with_its_reason(tmp_path: Path) -> None:
    exam = ExamBook(tmp_path, "dev", "").current()
    bad = Capture(np.zeros((4, 4, 3), np.uint8), 5, datetime.now(), "auto", "x")
    with pytest.raises(CaptureError, match=r"frame 5: expected a uint8 \(H, W\) image"):
        build_capture(bad, exam, Equipment("dev"), "", 1)
    events = Events()
    svc = service(tmp_path / "cap", None, events).start()
    try:
        svc.submit(np.zeros((4, 4, 3), np.uint8), 5, {}, "auto", "x")
        assert wait_for(lambda: events.of("capture_failed"), 5)
        assert "frame 5" in events.of("capture_failed")[0]["message"]
        assert svc.submit(frame(), 6, {}, "auto", "x")  # the writer goes on
        assert wait_for(lambda: events.of("capture_saved"), 5)
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        ({}, "patient_id: required"),
        ({"patient_id": "  "}, "patient_id: required"),
        ({"patient_id": "x" * 65}, "patient_id: at most 64"),
        ({"patient_id": "P1", "birth_date": "19801341"}, "birth_date: expected YYYYMMDD"),
        ({"patient_id": "P1", "birth_date": "30000101"}, "plausible"),
        ({"patient_id": "P1", "sex": "X"}, "sex: one of M, F, O"),
        ({"patient_id": "P1", "patient_name": "a\\b"}, "patient_name: control characters"),
        ({"patient_id": "P1", "study_instance_uid": "1.2.abc"}, "study_instance_uid: not a DICOM UID"),
        ({"patient_id": "unassigned"}, "reserved"),
        ({"patient_id": "P1", "ward": "3"}, "unknown exam field"),
        ({"patient_id": 7}, "patient_id: expected a string"),
    ],
)
def test_bad_exam_fields_are_named(request_: dict[str, Any], problem: str) -> None:
    with pytest.raises(ExamError, match=problem):
        validate_exam(request_)


def test_the_open_exam_and_the_unassigned_study_survive_a_restart(tmp_path: Path) -> None:
    book = ExamBook(tmp_path, "dev-1", "")
    unassigned = book.current()
    assert (
        unassigned.unassigned and ExamBook(tmp_path, "dev-1", "").current().study_uid == unassigned.study_uid
    )
    exam = book.start({"patient_id": "P9", "patient_name": NAME})
    assert book.take_instance_number() == 1
    again = ExamBook(tmp_path, "dev-1", "")
    assert again.current().study_uid == exam.study_uid and again.current().patient.name == NAME
    assert again.take_instance_number() == 2
    (tmp_path / "exam.json").write_text("{not json")
    broken = ExamBook(tmp_path, "dev-1", "")  # a damaged file: captures go on, unassigned
    assert broken.current().unassigned and "unreadable" in broken.load_problem
    assert (tmp_path / "exam.json.broken").is_file()


def test_quota_full_refuses_new_captures_and_never_deletes_unsent(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path, quota_bytes=10_000, retention_s=3600)
    a = store.write("1-a.dcm", b"a" * 4000)
    b = store.write("2-b.dcm", b"b" * 4000)
    store.mark_sent(a)  # the PACS has a: its room may be taken back
    c = store.write("3-c.dcm", b"c" * 4000)
    assert not (store.sent / a.name).exists() and b.exists() and c.exists()
    with pytest.raises(QuotaFullError, match="quota full"):
        store.write("4-d.dcm", b"d" * 4000)
    assert [p.name for p in store.pending()] == ["2-b.dcm", "3-c.dcm"]
    assert not list(store.tmp.iterdir())  # nothing half-written left behind
    (store.tmp / "5-e.dcm.part").write_bytes(b"half")  # a kill mid-write: never taken, removed at start
    assert list(CaptureStore(tmp_path, 10_000, 3600, owner=False).tmp.iterdir())  # not by the CLI
    assert not list(CaptureStore(tmp_path, 10_000, 3600).tmp.iterdir())

    events = Events()
    svc = service(tmp_path / "svc", None, events, quota_mb=0.01).start()  # 10 kB: a 12 kB frame does not fit
    try:
        svc.submit(frame(), 7, {}, "auto", "x")
        assert wait_for(lambda: events.of("capture_failed"), 5)
        assert "quota full" in events.of("capture_failed")[0]["message"]
        assert svc.status()["refused"] == 1 and svc.status()["queued"] == 0
    finally:
        svc.stop()


# --- the PACS -------------------------------------------------------------------------------------


def _arrived(pacs: LocalPacs, patient_id: str) -> list[dict[str, Any]]:
    return pacs.find({"PatientID": patient_id})


def test_captures_reach_the_pacs_with_the_right_patient_and_study(orthanc: LocalPacs, tmp_path: Path) -> None:
    events = Events()
    svc = service(tmp_path / "cap", orthanc, events, retention_days=1.0)
    patient = f"P-{uuid.uuid4().hex[:8]}"
    exam = svc.exams.start({"patient_id": patient, "patient_name": NAME, "accession_number": "A7"})
    svc.start()
    try:
        for i in range(3):
            assert svc.submit(frame(i), 100 + i, PARAMS, "auto", "quality held")
        assert wait_for(lambda: len(_arrived(orthanc, patient)) == 3 and not svc.store.pending(), 20)
        assert wait_for(lambda: len(events.of("capture_sent")) == 3, 5)
    finally:
        svc.stop()
    arrived = _arrived(orthanc, patient)
    study = orthanc.get(f"/instances/{arrived[0]['ID']}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == exam.study_uid
    assert study["MainDicomTags"]["AccessionNumber"] == "A7"
    assert study["PatientMainDicomTags"]["PatientName"] == NAME  # UTF-8 end to end
    sent = sorted(p.name.split("-", 1)[1].removesuffix(".dcm") for p in svc.store.all_captures()["sent"])
    assert sorted(orthanc.tags(i["ID"])["SOPInstanceUID"] for i in arrived) == sent  # kept: retention
    assert svc.status()["pacs"] == "ok" and svc.status()["queued"] == 0
    assert echo(PacsAddress("127.0.0.1", orthanc.dicom_port, orthanc.aet, "SONOGUIDE", 5)).endswith("ok")


def test_storage_commitment_confirms_before_anything_is_deleted(orthanc: LocalPacs, tmp_path: Path) -> None:
    """[pacs] commitment: C-STORE, then N-ACTION; files wait in stored/ until Orthanc's N-EVENT-REPORT
    (on its own association to our SCP) says they are committed."""
    events, port = Events(), free_port()
    aet = f"SG{uuid.uuid4().hex[:6].upper()}"
    sections = {
        "captures": {"dir": str(tmp_path / "cap"), "retention_days": 0.0},
        "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "called_ae": orthanc.aet, "calling_ae": aet,
                 "timeout_s": 5.0, "retry_initial_s": 0.2, "retry_max_s": 1.0, "commitment": True,
                 "commitment_port": port, "commitment_timeout_s": 2.0},
    }  # fmt: skip
    config = parse_config(sections, "<test>", env={})
    svc = CaptureService(config.captures, config.pacs, "dev", events)
    patient = f"SC-{uuid.uuid4().hex[:8]}"
    svc.exams.start({"patient_id": patient})
    # Orthanc does not know where we listen yet: it stores, but its commitment report cannot reach us.
    svc.start()
    try:
        for i in range(3):
            svc.submit(frame(i), i, PARAMS, "auto", "quality held")
        assert wait_for(lambda: len(_arrived(orthanc, patient)) == 3, 20)
        assert wait_for(lambda: len(svc.store.awaiting_commitment()) == 3, 5)
        assert not events.of("capture_sent") and svc.status()["awaiting_commitment"] == 3
        orthanc.register_modality(aet.lower(), aet, port)  # now it can answer; asked again after 2 s
        assert wait_for(lambda: len(events.of("capture_sent")) == 3, 20), events.items
    finally:
        svc.stop()
    assert svc.commitment_offered is True
    assert all("committed by" in e["message"] for e in events.of("capture_sent"))
    assert not svc.store.awaiting_commitment() and not svc.store.pending()
    assert not svc.store.all_captures()["sent"]  # retention 0: deleted once committed


def test_without_storage_commitment_offered_the_store_status_confirms(tmp_path: Path) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import UltrasoundImageStorage, Verification  # type: ignore[attr-defined]

    plain = AE(ae_title="PLAIN")
    plain.add_supported_context(UltrasoundImageStorage)
    plain.add_supported_context(Verification)
    port = free_port()
    server = plain.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    events = Events()
    sections = {
        "captures": {"dir": str(tmp_path / "cap")},
        "pacs": {"host": "127.0.0.1", "port": port, "called_ae": "PLAIN", "timeout_s": 5.0,
                 "commitment": True, "commitment_port": free_port()},
    }  # fmt: skip
    config = parse_config(sections, "<test>", env={})
    svc = CaptureService(config.captures, config.pacs, "dev", events).start()
    try:
        svc.submit(frame(), 1, {}, "manual", "x")
        assert wait_for(lambda: events.of("capture_sent"), 10), events.items
    finally:
        svc.stop()
        server.shutdown()
    assert (
        svc.commitment_offered is False
        and "no storage commitment offered" in events.of("capture_sent")[0]["message"]
    )
    assert len(svc.store.all_captures()["sent"]) == 1 and not svc.store.awaiting_commitment()


def test_an_instance_the_pacs_refuses_for_good_is_kept_in_failed(tmp_path: Path) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import UltrasoundImageStorage  # type: ignore[attr-defined]

    picky = AE(ae_title="PICKY")
    picky.add_supported_context(UltrasoundImageStorage)
    port = free_port()  # answers "data set does not match SOP class" (A900) to every image
    server = picky.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0xA900)]
    )
    events = Events()
    svc = service(tmp_path / "cap", None, events, port=port)
    svc.pacs_config = replace_called(svc.pacs_config, "PICKY")
    svc.address = replace_called(svc.address, "PICKY")
    svc.start()
    try:
        svc.submit(frame(), 1, {}, "manual", "x")
        assert wait_for(lambda: svc.store.all_captures()["failed"], 10), events.items
    finally:
        svc.stop()
        server.shutdown()
    (failed,) = events.of("capture_failed")
    assert "status 0xA900" in failed["message"] and "failed/" in failed["message"]
    assert svc.status()["failed"] == 1 and svc.status()["queued"] == 0
    assert svc.store.requeue_failed() == 1 and len(svc.store.pending()) == 1  # `captures send --failed`


def replace_called(obj: Any, called_ae: str) -> Any:
    import dataclasses

    return dataclasses.replace(obj, called_ae=called_ae)


def test_a_refused_association_keeps_everything_queued_with_the_reason(
    orthanc: LocalPacs, tmp_path: Path
) -> None:
    events = Events()
    sections = {
        "captures": {"dir": str(tmp_path / "cap")},
        "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "called_ae": "WRONGAE",
                 "timeout_s": 5.0, "retry_initial_s": 0.2, "retry_max_s": 0.5},
    }  # fmt: skip
    config = parse_config(sections, "<test>", env={})
    svc = CaptureService(config.captures, config.pacs, "dev", events).start()
    try:
        svc.submit(frame(), 1, {}, "manual", "x")
        assert wait_for(lambda: events.of("capture_failed"), 10)
        assert "refused the association" in events.of("capture_failed")[0]["message"]
        assert "WRONGAE" in events.of("capture_failed")[0]["message"]
        assert svc.status()["queued"] == 1
    finally:
        svc.stop()
    with pytest.raises(PacsUnavailableError, match="refused the association"):
        echo(PacsAddress("127.0.0.1", orthanc.dicom_port, "WRONGAE", "SONOGUIDE", 5))
    # A PACS that stores CT but not ultrasound: the SOP class refused, the file stays queued.
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

    from service.daemon.pacs_client import store_files

    ct_only = AE(ae_title="CTONLY")
    ct_only.add_supported_context(CTImageStorage)
    ct_only.add_supported_context(Verification)
    port = free_port()
    server = ct_only.start_server(("127.0.0.1", port), block=False)
    try:
        queued = svc.store.pending()
        with pytest.raises(PacsUnavailableError, match="does not accept Ultrasound Image Storage"):
            list(store_files(PacsAddress("127.0.0.1", port, "CTONLY", "SONOGUIDE", 5), queued))
        assert svc.store.pending() == queued
    finally:
        server.shutdown()
    with pytest.raises(PacsUnavailableError, match="not listening"):
        echo(PacsAddress("127.0.0.1", free_port(), "X", "SONOGUIDE", 2))


# --- the worklist ----------------------------------------------------------------------------------


def _worklist_item(
    folder: Path, n: int, patient_id: str, birth_date: str = "19700101", name: str = NAME
) -> None:
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, birth_date, "F"
    ds.AccessionNumber = f"AC{n:04d}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{10_000 + n}"
    ds.RequestedProcedureDescription = "Abdomen US"
    ds.ReferringPhysicianName = "Who^Doctor"
    step = pydicom.Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = "SONOGUIDE"
    step.ScheduledProcedureStepStartDate = "20261202"
    step.ScheduledProcedureStepDescription = "liver"
    ds.ScheduledProcedureStepSequence = [step]
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / f"{patient_id}-{n}.wl", enforce_file_format=True)


def test_the_worklist_gives_exam_fields_skips_malformed_items_and_cuts_huge_answers(
    orthanc: LocalPacs,
) -> None:
    from service.daemon.worklist import WorklistClient

    assert orthanc.worklist_served, "the Debian orthanc package ships libModalityWorklists"
    prefix = f"W{uuid.uuid4().hex[:6]}"
    _worklist_item(orthanc.worklist_dir, 1, f"{prefix}-ok")
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):  # pydicom writes it, warning
        _worklist_item(orthanc.worklist_dir, 2, f"{prefix}-bad", birth_date="19991399")  # not a date
    for n in range(3, 28):
        _worklist_item(orthanc.worklist_dir, n, f"{prefix}-many{n}")
    config = parse_config(
        {
            "worklist": {
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "called_ae": orthanc.aet,
                "max_results": 10,
            }
        },
        "<test>",
        env={},
    ).worklist
    client = WorklistClient(config, "SONOGUIDE")
    items, truncated = client.find({"patient_id": f"{prefix}-ok"})
    assert not truncated and len(items) == 1
    item = items[0]
    assert (
        item["patient_name"] == NAME
        and item["birth_date"] == "19700101"
        and item["accession_number"] == "AC0001"
    )
    assert item["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.10001"
    assert item["study_description"] == "Abdomen US"
    assert validate_exam(item) == item  # what the worklist gives, cmd/exam_start takes
    items, truncated = client.find({"patient_id": f"{prefix}-bad"})
    assert items == [] and not truncated  # malformed: skipped, not passed on
    items, truncated = client.find({"patient_id": f"{prefix}-many*"})
    assert truncated and len(items) == 10
    down = WorklistClient(replace_port(config, free_port()), "SONOGUIDE")
    with pytest.raises(PacsUnavailableError, match="not listening"):
        down.find({})


def replace_port(config: Any, port: int) -> Any:
    import dataclasses

    return dataclasses.replace(config, port=port)


def test_the_automatic_capture_becomes_a_dicom_file(tmp_path: Path) -> None:
    """The pipeline's own automatic capture (quality held) on simulated time with the shipped model."""
    from service.daemon.clock import SimClock
    from service.daemon.config import AutoConfig, ModelConfig
    from service.daemon.onnx_model import load_model
    from service.daemon.pipeline import Pipeline
    from service.policy.guidance import GuidanceParams
    from service.seams import MemoryPublisher
    from tests.service_bench import SimTimeProbe

    model = load_model("", ModelConfig(providers=("cpu",)))
    probe, clock, pub = SimTimeProbe(seed=2, initial={"depth_mm": 120.0}), SimClock(), MemoryPublisher()
    # The shipped model rates the simulated standard view ~0.66: the threshold is set below that.
    pipe = Pipeline(
        probe, model, pub, clock, AutoConfig(), GuidanceParams(good_quality=0.6, capture_after_s=1.0)
    )
    events = Events()
    svc = service(tmp_path / "cap", None, events).start()
    pipe.capture_sink = svc.submit
    frames = {}
    try:
        for _ in range(45):  # 1.5 simulated seconds
            f = probe.frame(clock.now())
            frames[f.frame_id] = f
            pipe.step(f)
            clock.advance(1 / 30)
        auto = [e for e in pub.events if e["kind"] == "capture"]
        assert len(auto) == 1 and auto[0]["source"] == "auto"
        assert wait_for(lambda: events.of("capture_saved"), 10)
    finally:
        svc.stop()
    (path,) = svc.store.pending()
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    assert block[0x03].value == "AUTO" and block[0x08].value == auto[0]["frame_id"]
    assert block[0x05].value == model.name and block[0x06].value == model.version
    assert np.array_equal(ds.pixel_array, frames[auto[0]["frame_id"]].image)
    assert events.of("capture_saved")[0]["source"] == "auto"


def test_captures_over_dicom_tls_to_orthanc(tmp_path: Path) -> None:
    """[pacs] tls: the PACS's certificate checked against a private CA, our client certificate shown."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=sonoguide test CA")  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    pacs = LocalPacs(
        workdir=tmp_path / "orthanc-tls", aet="TLSPACS", name="tls-pacs",
        DicomTlsEnabled=True, DicomTlsCertificate=str(tmp_path / "server.crt"),
        DicomTlsPrivateKey=str(tmp_path / "server.key"), DicomTlsTrustedCertificates=str(tmp_path / "ca.crt"),
        DicomTlsRemoteCertificateRequired=True,
    ).start()  # fmt: skip
    try:
        tls = {"tls": True, "ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "client.crt"),
               "key_file": str(tmp_path / "client.key")}  # fmt: skip
        base = {"host": "127.0.0.1", "port": pacs.dicom_port, "called_ae": "TLSPACS", "timeout_s": 5.0}
        config = parse_config(
            {"captures": {"dir": str(tmp_path / "cap")}, "pacs": {**base, **tls}}, "<t>", env={}
        )
        events = Events()
        svc = CaptureService(config.captures, config.pacs, "dev", events).start()
        try:
            svc.submit(frame(), 1, {}, "manual", "tls")
            assert wait_for(lambda: events.of("capture_sent"), 20), events.items
        finally:
            svc.stop()
        assert len(pacs.instances()) == 1 and "(TLS)" in events.of("capture_sent")[0]["message"]
        plain = PacsAddress("127.0.0.1", pacs.dicom_port, "TLSPACS", "SONOGUIDE", 3.0)
        with pytest.raises(PacsUnavailableError):  # without TLS the PACS does not talk to us
            echo(plain)
    finally:
        pacs.close()
