"""The DICOM network side: C-STORE of capture files, C-ECHO, and Modality Worklist C-FIND (pynetdicom).

Blocking calls, made only from the capture sender's thread, ``sonoguide captures send`` or
``sonoguide doctor``, never from the frame loop. Errors say which of the usual things went wrong:
nobody listening, association refused (wrong AE title), the SOP class not accepted, a failure status.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UltrasoundImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)

log = logging.getLogger(__name__)
for _noisy in ("pynetdicom", "pynetdicom.assoc", "pynetdicom.acse", "pynetdicom.dimse"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)  # it logs every PDU at INFO


@dataclass(frozen=True)
class PacsAddress:
    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout_s: float = 30.0
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def describe(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


class PacsUnavailableError(ConnectionError):
    """No association (PACS down, refused, SOP class not accepted): retry later, keep everything."""


@dataclass(frozen=True)
class StoreOutcome:
    path: Path
    ok: bool
    status: int | None
    reason: str
    permanent: bool = False  # a failure the same file will always get


def _ae(addr: PacsAddress) -> AE:
    ae = AE(ae_title=addr.calling_ae)
    ae.acse_timeout = addr.timeout_s
    ae.dimse_timeout = addr.timeout_s
    ae.network_timeout = addr.timeout_s
    ae.connection_timeout = min(addr.timeout_s, 10.0)
    return ae


def _tls(addr: PacsAddress) -> tuple[ssl.SSLContext, str] | None:
    if not addr.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=addr.ca_file or None)
    if addr.cert_file:
        context.load_cert_chain(addr.cert_file, addr.key_file or None)
    return context, addr.host


_RETRY_S = (0.05, 0.3, 0.6, 1.0)  # waits between association tries that ended in an abort


def _associate(ae: AE, addr: PacsAddress) -> Any:
    # A peer that rejects and closes at once can look like an abort to pynetdicom when the close wins
    # the race with the A-ASSOCIATE-RJ; another try names the real reason. A loaded 2-core machine lost
    # it three times running (1 `make test` in 5 beside `make mutation`), hence five tries, later ones
    # further apart (2 s in all, only on the way to an error).
    for attempt in range(len(_RETRY_S) + 1):
        try:
            assoc = ae.associate(addr.host, addr.port, ae_title=addr.called_ae, tls_args=_tls(addr))
        except (OSError, ssl.SSLError) as e:
            raise PacsUnavailableError(f"{addr.describe()}: {e}") from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PacsUnavailableError(
                f"{addr.describe()} refused the association (check the AE titles: we are "
                f"{addr.calling_ae!r}, calling {addr.called_ae!r})"
            )
        if attempt < len(_RETRY_S):
            time.sleep(_RETRY_S[attempt])
    # pynetdicom reports a refused connection as an abort too, so both are named.
    raise PacsUnavailableError(
        f"{addr.describe()}: no association (not listening, timed out, or aborted by the peer)"
    )


# Failure statuses a retry of the same file cannot fix (PS3.4 B.2.3: A9xx, Cxxx; 0122 SOP class not
# supported, 0124 not authorised). A7xx (out of resources) and the rest are retried.
def _permanent(status: int) -> bool:
    return (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000 or status in (0x0122, 0x0124)


def store_files(addr: PacsAddress, paths: Iterable[Path]) -> Iterator[StoreOutcome]:
    """C-STORE each file over one association, yielding each outcome as it comes.

    Raises :class:`PacsUnavailableError` when there is no association at all, or it breaks mid-transfer
    (then the file in flight and the rest are simply not yielded: still queued).
    """
    ae = _ae(addr)
    ae.add_requested_context(UltrasoundImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # Verification too: a PACS without ultrasound then still associates, and says so by rejecting
    # this one context, instead of aborting without a word.
    ae.add_requested_context(Verification)
    assoc = _associate(ae, addr)
    try:
        accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == UltrasoundImageStorage]
        if not accepted:
            raise PacsUnavailableError(f"{addr.describe()} does not accept Ultrasound Image Storage")
        for path in paths:
            try:
                ds = dcmread(path)
            except FileNotFoundError:
                continue  # sent meanwhile by another sender
            except Exception as e:
                yield StoreOutcome(path, False, None, f"unreadable capture file: {e}", permanent=True)
                continue
            try:
                reply = assoc.send_c_store(ds)
            except (OSError, RuntimeError) as e:
                raise PacsUnavailableError(f"{addr.describe()}: transfer broke off: {e}") from None
            status = getattr(reply, "Status", None)
            if status is None:  # no reply: association aborted or timed out
                raise PacsUnavailableError(f"{addr.describe()}: no C-STORE response (aborted or timed out)")
            status = int(status)
            if status == 0x0000 or (status & 0xF000) == 0xB000:  # success, or stored with a warning
                yield StoreOutcome(
                    path, True, status, "stored" if status == 0 else f"stored, warning 0x{status:04X}"
                )
            else:
                yield StoreOutcome(
                    path,
                    False,
                    status,
                    f"C-STORE failed, status 0x{status:04X}",
                    permanent=_permanent(status),
                )
                if not assoc.is_established:
                    raise PacsUnavailableError(
                        f"{addr.describe()}: association lost after status 0x{status:04X}"
                    )
    finally:
        if assoc.is_established:
            assoc.release()


STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance (PS3.4 J.3)


def request_commitment(addr: PacsAddress, refs: list[tuple[str, str]], transaction_uid: str) -> bool:
    """N-ACTION Storage Commitment for ``refs`` (SOP class, SOP instance UIDs); the answer comes
    later as an N-EVENT-REPORT to our own SCP. False when the PACS does not offer Storage Commitment."""
    ae = _ae(addr)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, addr)
    try:
        if not any(c.abstract_syntax == StorageCommitmentPushModel for c in assoc.accepted_contexts):
            return False
        info = Dataset()
        info.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_instance in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            items.append(item)
        info.ReferencedSOPSequence = items
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        if status is None or "Status" not in status:
            raise PacsUnavailableError(f"{addr.describe()}: no answer to the storage commitment request")
        if int(status.Status) != 0:
            raise PacsUnavailableError(
                f"{addr.describe()}: storage commitment request failed, status 0x{int(status.Status):04X}"
            )
        return True
    finally:
        if assoc.is_established:
            assoc.release()


class CommitmentListener:
    """Our Storage Commitment SCP: receives the PACS's N-EVENT-REPORTs (committed, failed)."""

    def __init__(self, ae_title: str, port: int, on_result: Any) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(StorageCommitmentPushModel)
        self.ae.add_supported_context(Verification)
        self.on_result = on_result  # (committed [uid], failed [(uid, reason)]) -> None
        self.port = port
        self.server: Any = None

    def start(self) -> CommitmentListener:
        from pynetdicom import evt

        self.server = self.ae.start_server(
            ("0.0.0.0", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._report)]
        )
        return self

    def _report(self, event: Any) -> tuple[int, None]:
        try:
            info = event.event_information
            committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
            failed = [
                (str(i.ReferencedSOPInstanceUID), int(i.get("FailureReason", 0)))
                for i in info.get("FailedSOPSequence", [])
            ]
            self.on_result(committed, failed)
            return 0x0000, None
        except Exception:
            log.exception("storage commitment report not understood")
            return 0x0110, None  # processing failure

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def echo(addr: PacsAddress) -> str:
    """C-ECHO; returns a one-line description or raises :class:`PacsUnavailableError`."""
    ae = _ae(addr)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, addr)
    try:
        reply = assoc.send_c_echo()
        status = getattr(reply, "Status", None)
        if status is None:
            raise PacsUnavailableError(f"{addr.describe()}: no C-ECHO response")
        if int(status) != 0:
            raise PacsUnavailableError(f"{addr.describe()}: C-ECHO status 0x{int(status):04X}")
        return f"C-ECHO to {addr.describe()} ok"
    finally:
        if assoc.is_established:
            assoc.release()


def find_worklist(addr: PacsAddress, query: Dataset, max_results: int) -> list[Dataset]:
    """Modality Worklist C-FIND; at most ``max_results`` items (the rest cancelled, not read)."""
    ae = _ae(addr)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = _associate(ae, addr)
    found: list[Dataset] = []
    try:
        responses = assoc.send_c_find(query, ModalityWorklistInformationFind)
        for status, identifier in responses:
            if status is None or "Status" not in status:  # pynetdicom: aborted, timed out, bad reply
                raise PacsUnavailableError(f"{addr.describe()}: worklist query got no valid response")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
                if len(found) >= max_results:
                    break
            elif code != 0x0000:
                raise PacsUnavailableError(f"{addr.describe()}: worklist query failed, status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.abort() if len(found) >= max_results else assoc.release()
    return found
