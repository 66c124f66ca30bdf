"""The Modality Worklist: what the hospital scheduled for this modality, as exam fields.

:func:`worklist_query` builds the C-FIND identifier (modality US, the requested keys empty so the
SCP fills them); :func:`exam_fields` turns one answer into the fields ``cmd/exam_start`` takes,
validated like a hand-entered exam. A malformed answer is skipped and counted, never passed on; a
huge answer is cut at ``[worklist] max_results`` (the rest is cancelled, not read).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from service.daemon.capture_exam import ExamError, validate_exam
from service.daemon.config import WorklistConfig
from service.daemon.pacs_client import PacsAddress, find_worklist

log = logging.getLogger(__name__)


def worklist_query(request: dict[str, Any]) -> Dataset:
    q = Dataset()
    q.SpecificCharacterSet = "ISO_IR 192"
    q.PatientName = request.get("patient_name", "") or ""
    q.PatientID = request.get("patient_id", "") or ""
    q.PatientBirthDate = ""
    q.PatientSex = ""
    q.AccessionNumber = ""
    q.StudyInstanceUID = ""
    q.RequestedProcedureDescription = ""
    q.ReferringPhysicianName = ""
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = request.get("date", "") or ""
    step.ScheduledProcedureStepDescription = ""
    q.ScheduledProcedureStepSequence = [step]
    return q


def exam_fields(item: Dataset) -> dict[str, str]:
    """One worklist answer as exam fields; raises :class:`ExamError` when it is not usable."""

    def text(keyword: str) -> str:
        value = item.get(keyword, "")
        return "" if value is None else str(value)

    description = text("RequestedProcedureDescription")
    steps = item.get("ScheduledProcedureStepSequence") or []
    if not description and steps:
        description = str(steps[0].get("ScheduledProcedureStepDescription", "") or "")
    return validate_exam(
        {
            "patient_id": text("PatientID"),
            "patient_name": text("PatientName"),
            "birth_date": text("PatientBirthDate"),
            "sex": text("PatientSex"),
            "accession_number": text("AccessionNumber"),
            "study_description": description[:64],
            "referring_physician": text("ReferringPhysicianName"),
            "study_instance_uid": text("StudyInstanceUID"),
        }
    )


class WorklistClient:
    def __init__(self, config: WorklistConfig, calling_ae: str) -> None:
        self.config = config
        self.address = PacsAddress(config.host, config.port, config.called_ae, calling_ae, config.timeout_s)

    def find(self, request: dict[str, Any]) -> tuple[list[dict[str, str]], bool]:
        """(items as exam fields, whether the answer was cut at max_results)."""
        limit = self.config.max_results
        answers = find_worklist(self.address, worklist_query(request), limit + 1)
        items, skipped = [], 0
        for answer in answers[:limit]:
            try:
                items.append(exam_fields(answer))
            except (ExamError, ValueError, TypeError, AttributeError) as e:
                skipped += 1
                log.warning("worklist item skipped: %s", e)
        if skipped:
            log.warning("%d malformed worklist item(s) skipped", skipped)
        return items, len(answers) > limit
