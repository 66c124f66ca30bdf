"""The exam the captures belong to: opened and closed by the display (``cmd/exam_start``,
``cmd/exam_end``) or the CLI, with patient and study data entered by hand or taken from the worklist.

:func:`validate_exam` is pure: it checks every field against what DICOM allows (lengths, characters,
dates, UIDs) and names the first field that is wrong. :class:`ExamBook` keeps the open exam in
``exam.json`` (written atomically) so a restart keeps captures in the same study. Without an open exam
captures go to the device's "unassigned" study of the day (patient id ``UNASSIGNED``), whose UIDs are
derived from the device id and the date: the same after a restart, reconciled later on the PACS.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from service.daemon.capture_dicom import UNASSIGNED_PATIENT_ID, Exam, Patient, derived_uid, new_uid
from service.daemon.capture_store import atomic_write

_UID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
# field -> (max length, required); person names are checked per component group
EXAM_FIELDS: dict[str, tuple[int, bool]] = {
    "patient_id": (64, True),
    "patient_name": (64, False),
    "birth_date": (8, False),
    "sex": (1, False),
    "accession_number": (16, False),
    "study_id": (16, False),
    "study_description": (64, False),
    "referring_physician": (64, False),
    "study_instance_uid": (64, False),
}


class ExamError(ValueError):
    """An exam request with a missing or invalid field; the message names it."""


def validate_exam(request: Mapping[str, Any]) -> dict[str, str]:
    """The exam fields, checked; raises :class:`ExamError` naming the first bad field."""
    unknown = sorted(set(request) - set(EXAM_FIELDS))
    if unknown:
        raise ExamError(f"unknown exam field(s) {unknown}; known: {', '.join(EXAM_FIELDS)}")
    fields: dict[str, str] = {}
    for name, (limit, required) in EXAM_FIELDS.items():
        value = request.get(name, "")
        if not isinstance(value, str):
            raise ExamError(f"{name}: expected a string, got {type(value).__name__}")
        value = value.strip()
        if required and not value:
            raise ExamError(f"{name}: required")
        if len(value) > limit:
            raise ExamError(f"{name}: at most {limit} characters, got {len(value)}")
        if any(ord(ch) < 32 or ch == "\\" for ch in value):
            raise ExamError(f"{name}: control characters and '\\' are not allowed")
        fields[name] = value
    if fields["patient_id"].upper() == UNASSIGNED_PATIENT_ID:
        raise ExamError(f"patient_id: {UNASSIGNED_PATIENT_ID!r} is reserved for captures without an exam")
    if fields["patient_name"].count("^") > 4:
        raise ExamError("patient_name: at most five components (Family^Given^Middle^Prefix^Suffix)")
    if fields["birth_date"]:
        try:
            born = datetime.strptime(fields["birth_date"], "%Y%m%d").date()
        except ValueError:
            raise ExamError(f"birth_date: expected YYYYMMDD, got {fields['birth_date']!r}") from None
        if born > date.today() or born.year < 1880:
            raise ExamError(f"birth_date: {fields['birth_date']} is not a plausible date of birth")
    if fields["sex"] and fields["sex"] not in ("M", "F", "O"):
        raise ExamError(f"sex: one of M, F, O (or empty), got {fields['sex']!r}")
    uid = fields["study_instance_uid"]
    if uid and not _UID.match(uid):
        raise ExamError(f"study_instance_uid: not a DICOM UID: {uid!r}")
    return fields


def _exam_from(fields: Mapping[str, str], series_uid: str, started: datetime, study_uid: str) -> Exam:
    return Exam(
        patient=Patient(fields["patient_id"], fields["patient_name"], fields["birth_date"], fields["sex"]),
        study_uid=study_uid,
        series_uid=series_uid,
        accession_number=fields["accession_number"],
        study_id=fields["study_id"],
        study_description=fields["study_description"],
        referring_physician=fields["referring_physician"],
        started=started,
    )


class ExamBook:
    """The open exam (or none) and the instance counter, persisted in ``<dir>/exam.json``."""

    def __init__(self, folder: Path, device_id: str, uid_root: str) -> None:
        self.path = Path(folder) / "exam.json"
        self.device_id, self.uid_root = device_id, uid_root
        self._lock = threading.RLock()  # the state in memory, never held over disk I/O
        self._save_lock = threading.Lock()
        self._version = self._saved_version = 0
        self._fields: dict[str, str] | None = None
        self._study_uid = self._series_uid = ""
        self._started = datetime(1970, 1, 1)
        self._next_instance = 1
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self._next_instance = int(data.get("next_instance", 1))
            if data.get("exam"):
                exam = data["exam"]
                self._fields = validate_exam(exam["fields"])
                self._study_uid, self._series_uid = exam["study_uid"], exam["series_uid"]
                self._started = datetime.fromisoformat(exam["started"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            # A damaged exam file must not stop captures: they go to the unassigned study.
            self._fields = None
            broken = self.path.with_suffix(".json.broken")
            self.path.replace(broken)
            self.load_problem = f"{self.path}: unreadable ({e}); kept as {broken.name}, captures unassigned"
            return
        self.load_problem = ""

    def _snapshot(self) -> bytes:
        """The state to persist (under ``_lock``: memory only)."""
        exam = None
        if self._fields is not None:
            exam = {
                "fields": self._fields,
                "study_uid": self._study_uid,
                "series_uid": self._series_uid,
                "started": self._started.isoformat(),
            }
        self._version += 1
        return json.dumps({"exam": exam, "next_instance": self._next_instance}, indent=1).encode()

    def _save(self, version: int, body: bytes) -> None:
        """Write outside ``_lock``, so the frame loop's ``current()`` never waits for an fsync; a
        snapshot older than one already written is skipped (two writers, out of order)."""
        with self._save_lock:
            if version > self._saved_version:
                atomic_write(self.path, body)
                self._saved_version = version

    def start(self, request: Mapping[str, Any], now: datetime | None = None) -> Exam:
        fields = validate_exam(request)
        with self._lock:
            self._fields = fields
            self._study_uid = fields["study_instance_uid"] or new_uid(self.uid_root)
            self._series_uid = new_uid(self.uid_root)
            self._started = now or datetime.now()
            body, version, exam = self._snapshot(), self._version, self.current()
        self._save(version, body)
        return exam

    def end(self) -> Exam | None:
        with self._lock:
            ended = self.current() if self._fields is not None else None
            self._fields = None
            body, version = self._snapshot(), self._version
        self._save(version, body)
        return ended

    def current(self, now: datetime | None = None) -> Exam:
        """The open exam, or today's unassigned study."""
        with self._lock:
            if self._fields is not None:
                return _exam_from(self._fields, self._series_uid, self._started, self._study_uid)
            day = (now or datetime.now()).strftime("%Y%m%d")
            return Exam(
                patient=Patient(UNASSIGNED_PATIENT_ID, "UNASSIGNED^" + self.device_id[:48]),
                study_uid=derived_uid(self.uid_root, self.device_id, "unassigned", day),
                series_uid=derived_uid(self.uid_root, self.device_id, "unassigned-series", day),
                study_description="unassigned captures",
                started=datetime.strptime(day, "%Y%m%d"),
                unassigned=True,
            )

    @property
    def open(self) -> bool:
        return self._fields is not None

    def take_instance_number(self) -> int:
        """The next instance number (persisted: numbers go on rising after a restart)."""
        with self._lock:
            n = self._next_instance
            self._next_instance += 1
            body, version = self._snapshot(), self._version
        self._save(version, body)
        return n
