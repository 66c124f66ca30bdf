"""One capture as one DICOM Ultrasound Image Storage instance (pure: no disk, no network, no clock).

:func:`build_capture` takes the frame exactly as the probe delivered it (uint8, H x W), the probe's
settings for that frame, the exam it belongs to and why it was taken, and returns a pydicom
``FileDataset`` that passes dciodvfy (tests/daemon/test_captures.py). The settings with a standard
home go there (Depth of Scan Field, Transducer Frequency in the ultrasound region, pixel spacing from
the depth); the rest (gain, TGC, capture reason, the judging model) go in a private block whose
creator is :data:`PRIVATE_CREATOR`, and in words in Image Comments for a human reader.

UIDs come from ``uid_root`` (a root the manufacturer registered) or, with no root configured, from the
UUID arc ``2.25`` (ISO/IEC 9834-8), which needs no registration. :func:`deidentify` gives the copy for
teaching or export (PS3.15 basic profile, the subset this device ever writes).
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, UltrasoundImageStorage

from service import __version__

MANUFACTURER = "sonoguide"
MODEL_NAME = "sonoguide acquisition assistant"
PRIVATE_CREATOR = "SONOGUIDE 1"
PRIVATE_GROUP = 0x0009
IMPLEMENTATION_CLASS_UID = PYDICOM_IMPLEMENTATION_UID  # the files are written by pydicom
IMPLEMENTATION_VERSION = f"SONOGUIDE_{__version__}"[:16]
UNASSIGNED_PATIENT_ID = "UNASSIGNED"
CAPTURE_REASONS = ("auto", "manual", "probe")
# Private elements (group 0009, block of PRIVATE_CREATOR): element offset -> (VR, meaning)
PRIVATE_ELEMENTS = {
    0x01: ("DS", "gain (dB)"),
    0x02: ("DS", "TGC per band (dB)"),
    0x03: ("CS", "capture reason: AUTO, MANUAL or PROBE"),
    0x04: ("LO", "capture reason in words"),
    0x05: ("LO", "model name"),
    0x06: ("LO", "model version"),
    0x07: ("DS", "model's view quality for this frame (0..1)"),
    0x08: ("UL", "probe frame id"),
}
_UUID_NS = uuid.UUID("6f1d8d55-6a0b-4c7e-9a55-5d3e0c1f2b7a")  # sonoguide's namespace for derived UIDs


class CaptureError(ValueError):
    """A capture that cannot become a valid DICOM instance; the message names the problem."""


def derived_uid(root: str, *parts: str) -> str:
    """A UID that is the same every time for the same parts (an exam's study after a restart).

    Under ``root`` a decimal digest is appended; with no root the UUID arc ``2.25`` holds a name-based
    UUID. Both stay within the 64 characters a UI may have.
    """
    name = "/".join(parts)
    if not root:
        return f"2.25.{uuid.uuid5(_UUID_NS, name).int}"
    digest = str(int.from_bytes(hashlib.sha256(name.encode()).digest()[:12], "big"))
    uid = f"{root.rstrip('.')}.{digest}"
    return uid[:64].rstrip(".")


def new_uid(root: str) -> str:
    """A fresh UID under ``root`` (or ``2.25`` + a random UUID)."""
    if not root:
        return f"2.25.{uuid.uuid4().int}"
    digest = str(uuid.uuid4().int)
    return f"{root.rstrip('.')}.{digest}"[:64].rstrip(".")


@dataclass(frozen=True)
class Patient:
    """Who the exam is of. Empty fields are written empty (the DICOM types allow it), never invented."""

    id: str = UNASSIGNED_PATIENT_ID
    name: str = ""  # DICOM person name: Family^Given^Middle^Prefix^Suffix
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M, F, O or empty


@dataclass(frozen=True)
class Exam:
    """The study the captures belong to: entered by hand, picked from the worklist, or unassigned."""

    patient: Patient
    study_uid: str
    series_uid: str
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    started: datetime = field(default_factory=lambda: datetime(1970, 1, 1))
    unassigned: bool = False


@dataclass(frozen=True)
class Capture:
    """One frame to keep, with everything the file says about it."""

    image: np.ndarray  # uint8 (H, W), as the probe delivered it
    frame_id: int
    acquired: datetime  # device wall clock
    reason: str  # one of CAPTURE_REASONS
    reason_text: str
    gain_db: float | None = None
    depth_mm: float | None = None
    freq_mhz: float | None = None
    tgc_db: tuple[float, ...] = ()
    quality: float | None = None
    model_name: str = ""
    model_version: str = ""


@dataclass(frozen=True)
class Equipment:
    device_id: str
    probe: str = ""  # the probe's model and serial, as IDENTIFY reports them
    institution: str = ""
    station_name: str = ""


def _text(value: str, limit: int) -> str:
    """A value cut to its VR's length; DICOM text may not carry the backslash (the value separator)."""
    return value.replace("\\", "/")[:limit]


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    return text[:16]


def character_set(*values: str) -> str:
    """The Specific Character Set these values need: plain ASCII, else UTF-8 (ISO_IR 192)."""
    return "ISO_IR 192" if any(not v.isascii() for v in values) else ""


def build_capture(
    capture: Capture, exam: Exam, equipment: Equipment, uid_root: str, instance_number: int
) -> FileDataset:
    """The capture as a DICOM Ultrasound Image (single frame, MONOCHROME2, 8 bit, uncompressed)."""
    image = np.asarray(capture.image)
    if image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 1:
        raise CaptureError(
            f"frame {capture.frame_id}: expected a uint8 (H, W) image, got {image.dtype} {image.shape}"
        )
    if capture.reason not in CAPTURE_REASONS:
        raise CaptureError(f"capture reason must be one of {CAPTURE_REASONS}, got {capture.reason!r}")
    rows, cols = image.shape
    sop_uid = new_uid(uid_root)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds = FileDataset("capture", {}, file_meta=meta, preamble=b"\0" * 128)

    p = exam.patient
    charset = character_set(
        p.name, p.id, exam.study_description, exam.referring_physician, equipment.institution
    )
    if charset:
        ds.SpecificCharacterSet = charset
    when, started = capture.acquired, exam.started
    # SOP Common
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S.%f")
    # Patient
    ds.PatientName = _text(p.name, 64)
    ds.PatientID = _text(p.id, 64)
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    # General Study
    ds.StudyInstanceUID = exam.study_uid
    ds.StudyDate = started.strftime("%Y%m%d")
    ds.StudyTime = started.strftime("%H%M%S")
    ds.ReferringPhysicianName = _text(exam.referring_physician, 64)
    ds.StudyID = _text(exam.study_id, 16)
    ds.AccessionNumber = _text(exam.accession_number, 16)
    if exam.study_description:
        ds.StudyDescription = _text(exam.study_description, 64)
    # General Series
    ds.Modality = "US"
    ds.SeriesInstanceUID = exam.series_uid
    ds.SeriesNumber = 1
    ds.Laterality = ""  # Type 2C: an abdominal sweep has none; dciodvfy wants it present
    ds.SeriesDescription = "unassigned captures" if exam.unassigned else "guided captures"
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = _text(equipment.device_id, 64)
    ds.SoftwareVersions = [f"sonoguide {__version__}"[:64]] + (
        [_text(f"{capture.model_name} {capture.model_version}", 64)] if capture.model_name else []
    )
    if equipment.institution:
        ds.InstitutionName = _text(equipment.institution, 64)
    if equipment.station_name:
        ds.StationName = _text(equipment.station_name, 16)
    # General Image / acquisition
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = ""
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = _text(_comments(capture), 10240)
    # Ultrasound acquisition parameters with a standard home
    if equipment.probe:
        ds.TransducerData = [_text(equipment.probe, 64)]
    if capture.depth_mm is not None:
        ds.DepthOfScanField = round(capture.depth_mm)
    # Image Pixel / US Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image).tobytes()
    if capture.depth_mm:
        ds.SequenceOfUltrasoundRegions = Sequence([_region(rows, cols, capture)])
    _private(ds, capture)
    return ds


def _comments(c: Capture) -> str:
    settings = ", ".join(
        s
        for s in (
            f"gain {c.gain_db:g} dB" if c.gain_db is not None else "",
            f"depth {c.depth_mm:g} mm" if c.depth_mm is not None else "",
            f"frequency {c.freq_mhz:g} MHz" if c.freq_mhz is not None else "",
            f"TGC {list(c.tgc_db)} dB" if c.tgc_db else "",
        )
        if s
    )
    judged = f"; judged by {c.model_name} {c.model_version}" if c.model_name else ""
    return f"{c.reason} capture ({c.reason_text}) of probe frame {c.frame_id}; {settings}{judged}"


def _region(rows: int, cols: int, c: Capture) -> Dataset:
    """The whole image as one 2D tissue region; square pixels, depth over the rows (cm per pixel)."""
    region = Dataset()
    cm_per_px = float(c.depth_mm or 0.0) / 10.0 / rows
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = cols - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = cm_per_px
    region.PhysicalDeltaY = cm_per_px
    if c.freq_mhz:
        region.TransducerFrequency = round(c.freq_mhz * 1000)  # kHz
    return region


def _private(ds: Dataset, c: Capture) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    if c.gain_db is not None:
        block.add_new(0x01, "DS", _ds(c.gain_db))
    if c.tgc_db:
        block.add_new(0x02, "DS", [_ds(v) for v in c.tgc_db])
    block.add_new(0x03, "CS", c.reason.upper())
    block.add_new(0x04, "LO", _text(c.reason_text, 64))
    if c.model_name:
        block.add_new(0x05, "LO", _text(c.model_name, 64))
        block.add_new(0x06, "LO", _text(c.model_version, 64))
    if c.quality is not None:
        block.add_new(0x07, "DS", _ds(c.quality))
    block.add_new(0x08, "UL", int(c.frame_id) & 0xFFFFFFFF)


# --- de-identification (PS3.15 Annex E, basic profile, for what this device writes) ------------------

_REMOVED = (
    "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "InstitutionName", "StationName",
    "DeviceSerialNumber", "StudyDescription", "ImageComments", "TransducerData",
)  # fmt: skip
_EMPTIED = ("AccessionNumber", "StudyID")


def deidentify(ds: Dataset, salt: str, uid_root: str = "") -> Dataset:
    """A copy without the patient's identity: names and ids replaced, identifying attributes removed,
    UIDs replaced consistently (the same study stays one study), private tags dropped."""
    out = copy.deepcopy(ds)  # Dataset.copy() shares the elements with the original
    if not hasattr(out, "file_meta"):
        out.file_meta = FileMetaDataset()
    pseudonym = hashlib.sha256(f"{salt}/{ds.get('PatientID', '')}".encode()).hexdigest()[:16].upper()
    out.remove_private_tags()
    for keyword in _REMOVED:
        if keyword in out:
            delattr(out, keyword)
    for keyword in _EMPTIED:
        if keyword in out:
            setattr(out, keyword, "")
    out.PatientName = f"ANON^{pseudonym[:8]}"
    out.PatientID = f"ANON-{pseudonym}"
    out.PatientBirthDate = ""
    out.PatientSex = ""
    out.ReferringPhysicianName = ""
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "sonoguide PS3.15 basic profile"
    if "SpecificCharacterSet" in out:
        del out.SpecificCharacterSet  # what remains is ASCII
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(out, keyword, derived_uid(uid_root, "deid", salt, str(ds.get(keyword, ""))))
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out
