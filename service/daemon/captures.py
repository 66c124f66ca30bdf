"""Captures, stored and forwarded: the frame loop hands a frame over and never waits.

Two threads of their own, joined by a bounded queue and the outbox folder:

    frame loop ──submit()──▶ [queue, 32] ──writer──▶ DICOM file in outbox/ (fsync, rename) ─┐
      (a copy of the image, put_nowait)                                                       │
                                    sender ◀── wake ─────────────────────────────────────────┘
                                      └─ C-STORE to the PACS, retry with backoff; sent/ or failed/

``submit`` copies the frame (a few tens of kB) and puts it on the queue without blocking; a full
queue (the disk stalled) refuses the capture with an event. The writer builds the instance
(:mod:`service.daemon.capture_dicom`) for the exam open when the frame was taken, writes it
atomically under the quota (:mod:`service.daemon.capture_store`) and says "saved". The sender sends
the outbox, oldest first, one association per batch; a PACS that is down, refuses the association or
the SOP class, or breaks off mid-transfer leaves everything queued and is retried after
``retry_initial_s``, doubling up to ``retry_max_s``. The outbox is the queue, so it survives restarts;
a capture whose confirmation a kill interrupted is sent again, and the PACS keeps one instance (same
SOP Instance UID).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.devicelog import device_logger
from service.daemon.capture_dicom import Capture, Equipment, build_capture, deidentify, new_uid
from service.daemon.capture_exam import ExamBook
from service.daemon.capture_store import (
    DISK_FULL_ERRNOS,
    CaptureStore,
    DiskFullError,
    QuotaFullError,
    disk_full_error,
)
from service.daemon.config import CapturesConfig, PacsConfig
from service.daemon.pacs_client import (
    CommitmentListener,
    PacsAddress,
    PacsUnavailableError,
    request_commitment,
    store_files,
)

EventSink = Callable[..., None]  # (kind, message, **fields), e.g. ProbeState.event
QUEUE_SIZE = 32
SEND_BATCH = 50


def captures_dir(config: CapturesConfig, env: dict[str, str] | None = None) -> Path:
    """``[captures] dir``, or under systemd's state directory, or the packaged default."""
    env = dict(os.environ) if env is None else env
    if config.dir:
        return Path(config.dir)
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state or "/var/lib/sonoguide") / "captures"


def pacs_address(pacs: PacsConfig) -> PacsAddress | None:
    if not pacs.host:
        return None
    return PacsAddress(
        pacs.host, pacs.port, pacs.called_ae, pacs.calling_ae, pacs.timeout_s,
        pacs.tls, pacs.ca_file, pacs.cert_file, pacs.key_file,
    )  # fmt: skip


@dataclass
class _Pending:
    capture: Capture
    exam: Any


class CaptureService:
    def __init__(
        self,
        config: CapturesConfig,
        pacs: PacsConfig,
        device_id: str,
        event: EventSink,
        folder: Path | None = None,
        probe_description: str = "",
    ) -> None:
        self.config, self.pacs_config = config, pacs
        self.folder = Path(folder) if folder is not None else captures_dir(config)
        self.log = device_logger(__name__, f"device:{device_id}")
        self.store = CaptureStore(self.folder, int(config.quota_mb * 1e6), config.retention_days * 86400.0)
        self.exams = ExamBook(self.folder, device_id, config.uid_root)
        if self.exams.load_problem:
            self.log.warning("%s", self.exams.load_problem)
        self.equipment = Equipment(device_id, probe_description, config.institution)
        self.address = pacs_address(pacs)
        self.event = event
        self._queue: queue.Queue[_Pending] = queue.Queue(QUEUE_SIZE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.saved = self.sent = self.refused = 0
        self.pacs_state = "none" if self.address is None else "unknown"  # ok | down | none | unknown
        self.last_error = ""
        self.disk_full = False  # the last capture found the filesystem full (logged once per episode)
        self._failures = 0
        self._next_try = 0.0
        # Storage Commitment: None = not yet known whether the PACS offers it; uid -> when last asked
        self.commitment_offered: bool | None = None if pacs.commitment else False
        self._asked: dict[str, float] = {}
        self._listener: CommitmentListener | None = None

    # --- the frame loop's side: never blocks ------------------------------------------------------

    def submit(
        self,
        image: Any,
        frame_id: int,
        params: dict[str, Any],
        reason: str,
        reason_text: str,
        quality: float | None = None,
        model: Any = None,
    ) -> bool:
        """Queue a capture of this frame; False (and an event) when it cannot be taken."""
        tgc = params.get("tgc_db") or ()

        def number(key: str) -> float | None:
            value = params.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        capture = Capture(
            image=np.array(image, dtype=np.uint8, copy=True),
            frame_id=int(frame_id),
            acquired=datetime.now(),
            reason=reason,
            reason_text=reason_text,
            gain_db=number("gain_db"),
            depth_mm=number("depth_mm"),
            freq_mhz=number("freq_mhz"),
            tgc_db=tuple(float(v) for v in tgc),
            quality=quality,
            model_name=str(getattr(model, "name", "") or ""),
            model_version=str(getattr(model, "version", "") or ""),
        )
        try:
            self._queue.put_nowait(_Pending(capture, self.exams.current()))
            return True
        except queue.Full:
            self.refused += 1
            self.event(
                "capture_failed",
                f"capture of frame {frame_id} refused: the disk is not keeping up",
                frame_id=int(frame_id),
                reason="capture writer behind",
            )
            return False

    # --- threads ----------------------------------------------------------------------------------

    def start(self) -> CaptureService:
        if self.pacs_config.commitment and self.address is not None:
            self._listener = CommitmentListener(
                self.pacs_config.calling_ae, self.pacs_config.commitment_port, self._on_commitment
            ).start()
        for name, target in (("capture-writer", self._writer_loop), ("capture-sender", self._sender_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), then stop; unsent files stay in the outbox."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def wake(self) -> None:
        """Try the PACS now (``sonoguide captures send`` does it from outside; tests too)."""
        self._next_try = 0.0
        self._wake.set()

    def _writer_loop(self) -> None:
        while True:
            try:
                pending = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                self.write(pending.capture, pending.exam)
            except Exception as e:  # never let one bad capture stop the writer
                self.log.exception("capture of frame %d not written", pending.capture.frame_id)
                self.event(
                    "capture_failed",
                    f"capture of frame {pending.capture.frame_id} not written: {e}",
                    frame_id=pending.capture.frame_id,
                    reason=str(e)[:200],
                )

    def write(self, capture: Capture, exam: Any) -> Path | None:
        """Build and store one capture (the writer thread; the CLI and tests may call it directly);
        None when the quota or the disk is full (an event says so, nothing of it is left behind)."""
        try:
            number = self.exams.take_instance_number()  # exam.json first: a number used is a number kept
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            self._refused(capture, disk_full_error(self.folder, e))
            return None
        ds: Any = build_capture(capture, exam, self.equipment, self.config.uid_root, number)
        if self.config.deidentify:
            ds = deidentify(ds, salt=self.equipment.device_id, uid_root=self.config.uid_root)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        stamp = capture.acquired.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{ds.SOPInstanceUID}.dcm"
        try:
            path = self.store.write(name, buf.getvalue())
        except (QuotaFullError, DiskFullError) as e:
            self._refused(capture, e)
            return None
        if self.disk_full:
            self.disk_full = False
            self.log.info("captures disk has room again: capture of frame %d saved", capture.frame_id)
        self.saved += 1
        self.log.info("capture of frame %d saved as %s", capture.frame_id, path.name)
        self.event(
            "capture_saved",
            f"capture of frame {capture.frame_id} saved"
            + ("" if exam.unassigned else " to the open exam")
            + (", queued for the PACS" if self.address else " (no PACS configured: kept on the device)"),
            frame_id=capture.frame_id,
            sop_instance_uid=str(ds.SOPInstanceUID),
            source={"auto": "auto", "manual": "command", "probe": "probe"}[capture.reason],
        )
        self._wake.set()
        return path

    def _refused(self, capture: Capture, problem: QuotaFullError | DiskFullError) -> None:
        self.refused += 1
        full_disk = isinstance(problem, DiskFullError)
        if not (full_disk and self.disk_full):  # one warning per episode, an event per capture
            self.log.warning("%s", problem)
        self.disk_full = full_disk
        self.event("capture_failed", f"capture of frame {capture.frame_id} refused: {problem}",
                   frame_id=capture.frame_id, reason="disk full" if full_disk else "quota full")  # fmt: skip

    def _sender_loop(self) -> None:
        last_expire = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_expire > 60.0:
                last_expire = now
                with contextlib.suppress(OSError):
                    self.store.expire()
            if self.address is None or now < self._next_try:
                self._wake.wait(max(0.01, min(1.0, self._next_try - now)) if self.address else 1.0)
                self._wake.clear()
                continue
            self._ask_again()
            pending = self.store.pending()
            if not pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.send_batch(pending[:SEND_BATCH])

    def send_batch(self, paths: list[Path]) -> int:
        """Send these files over one association; returns how many the PACS stored."""
        assert self.address is not None
        confirmed = 0
        to_commit: list[Path] = []
        try:
            for outcome in store_files(self.address, paths):
                uid = _uid_of(outcome.path)
                if outcome.ok:
                    confirmed += 1
                    if self.commitment_offered is False:
                        self._confirmed(outcome.path, uid, "stored on")
                    else:
                        to_commit.append(self.store.mark_stored(outcome.path))
                elif outcome.permanent:
                    self.store.mark_failed(outcome.path)
                    self.log.warning("capture %s refused by the PACS: %s", uid, outcome.reason)
                    self.event("capture_failed", f"capture {uid} refused by the PACS: {outcome.reason} "
                               "(kept in failed/; `sonoguide captures send --failed` retries)",
                               sop_instance_uid=uid, reason=outcome.reason)  # fmt: skip
                else:
                    raise PacsUnavailableError(outcome.reason)
                if self._stop.is_set():
                    break
        except PacsUnavailableError as e:
            self._failed(str(e))
            return confirmed
        except Exception as e:  # a pynetdicom surprise: keep everything, retry later
            self.log.exception("sending captures failed")
            self._failed(f"unexpected error: {e}")
            return confirmed
        finally:
            if to_commit:
                self._ask_commitment(to_commit)
        if self.pacs_state != "ok":
            self.log.info("PACS %s reachable", self.address.describe())
        self.pacs_state, self._failures, self.last_error = "ok", 0, ""
        return confirmed

    def _confirmed(self, path: Path, uid: str, how: str) -> None:
        assert self.address is not None
        self.store.mark_sent(path)
        self.sent += 1
        self.event("capture_sent", f"capture {uid} {how} {self.address.describe()}", sop_instance_uid=uid)

    # --- Storage Commitment ([pacs] commitment = true) -----------------------------------------------

    def _ask_commitment(self, paths: list[Path]) -> None:
        """Ask the PACS to commit these stored files; the answer arrives in :meth:`_on_commitment`."""
        assert self.address is not None
        refs = [("1.2.840.10008.5.1.4.1.1.6.1", _uid_of(p)) for p in paths]
        try:
            offered = request_commitment(self.address, refs, new_uid(self.config.uid_root))
        except PacsUnavailableError as e:
            self.log.warning("storage commitment not requested yet: %s", e)
            offered = True  # asked again after commitment_timeout_s
        now = time.monotonic()
        for _, uid in refs:
            self._asked[uid] = now
        if not offered:  # the PACS stores but does not commit: its C-STORE status is the confirmation
            if self.commitment_offered is not False:
                self.log.info("PACS %s does not offer Storage Commitment", self.address.describe())
            self.commitment_offered = False
            for path in paths:
                self._confirmed(path, _uid_of(path), "stored (no storage commitment offered) on")
        else:
            self.commitment_offered = True

    def _ask_again(self) -> None:
        """Stored files whose commitment did not come within the timeout (or before a restart)."""
        if self.commitment_offered is False:
            for path in self.store.awaiting_commitment():  # commitment switched off since
                self._confirmed(path, _uid_of(path), "stored on")
            return
        now, timeout = time.monotonic(), self.pacs_config.commitment_timeout_s
        due = [
            p for p in self.store.awaiting_commitment() if now - self._asked.get(_uid_of(p), -1e18) > timeout
        ]
        if due:
            self._ask_commitment(due[:SEND_BATCH])

    def _on_commitment(self, committed: list[str], failed: list[tuple[str, int]]) -> None:
        """The PACS's N-EVENT-REPORT (its own association, pynetdicom's thread)."""
        for uid in committed:
            path = self.store.find_stored(uid)
            if path is not None:
                self._asked.pop(uid, None)
                self._confirmed(path, uid, "committed by")
        for uid, reason in failed:
            path = self.store.find_stored(uid)
            if path is not None:
                self._asked.pop(uid, None)
                self.store.requeue(path)
                self.event("capture_failed", f"capture {uid}: the PACS could not commit it "
                           f"(reason 0x{reason:04X}); sending it again", sop_instance_uid=uid,
                           reason=f"commitment failed 0x{reason:04X}")  # fmt: skip
        self._wake.set()

    def _failed(self, reason: str) -> None:
        self._failures += 1
        delay = min(
            self.pacs_config.retry_max_s, self.pacs_config.retry_initial_s * 2 ** (self._failures - 1)
        )
        self._next_try = time.monotonic() + delay
        queued = len(self.store.pending())
        if self.pacs_state != "down" or reason != self.last_error:
            self.log.warning(
                "PACS unavailable: %s; %d capture(s) queued, next try in %.1f s", reason, queued, delay
            )
        self.pacs_state, self.last_error = "down", reason
        self.event(
            "capture_failed",
            f"{queued} capture(s) not sent: {reason}; retrying in {delay:.0f} s",
            reason=reason[:200],
        )

    # --- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        stats = self.store.stats()
        oldest = stats.oldest_unsent_age_s
        return {
            "enabled": True,
            "queued": stats.queued,
            "awaiting_commitment": stats.awaiting_commitment,
            "oldest_unsent_s": None if oldest is None else round(oldest, 1),
            "failed": stats.failed,
            "saved": self.saved,
            "sent": self.sent,
            "refused": self.refused,
            "used_mb": round(stats.used_bytes / 1e6, 2),
            "quota_mb": round(stats.quota_bytes / 1e6, 2),
            "pacs": self.pacs_state,
            "disk_full": self.disk_full,
            "exam": "open" if self.exams.open else "unassigned",
        }


def _uid_of(path: Path) -> str:
    """The SOP Instance UID in a capture's file name (``<UTC time>-<UID>.dcm``)."""
    return path.stem.split("-", 1)[-1]
