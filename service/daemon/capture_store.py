"""The captures on the device's disk: the persistent outbox of store-and-forward.

Layout under the captures folder (``[captures] dir``, by default ``$STATE_DIRECTORY/captures``)::

    tmp/      files being written (``*.part``); whatever is here at start was never taken: removed
    outbox/   written, fsynced, not yet confirmed by the PACS: the send queue, oldest name first
    stored/   stored on the PACS, waiting for its Storage Commitment ([pacs] commitment = true)
    sent/     confirmed by the PACS, kept ``retention_days`` (or until the quota needs the room)
    failed/   refused by the PACS for good (the instance itself); kept until a technician acts

A file is *taken* once it is in ``outbox/``: written to ``tmp/``, fsynced, renamed, and the folder
fsynced. Moving it on (``sent/``, ``failed/``) is one rename, so a kill at any moment leaves each
capture in exactly one folder. The quota counts every folder; when a new capture does not fit, sent
files go first (oldest first: the PACS has them), and if that is not enough the capture is refused
(:class:`QuotaFullError`). An unsent capture is never deleted to make room. A filesystem that fills
before the quota does (ENOSPC, EDQUOT) refuses the capture the same way (:class:`DiskFullError`), with
nothing of it left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from service.model_store.fsutil import fsync_dir

FOLDERS = ("tmp", "outbox", "stored", "sent", "failed")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class QuotaFullError(RuntimeError):
    """No room for a new capture without deleting an unsent one."""


class DiskFullError(RuntimeError):
    """The filesystem under the captures folder is full: the capture was not taken."""


def disk_full_error(root: Path, error: OSError) -> DiskFullError:
    """The refusal for ``error`` (ENOSPC/EDQUOT) in words: where, how much is free, what happens now."""
    try:
        st = os.statvfs(root)
        free = f"{st.f_bavail * st.f_frsize / 1e3:.0f} kB free of {st.f_blocks * st.f_frsize / 1e6:.1f} MB"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"captures disk full: {error.strerror or error} on the filesystem of {root} ({free}); the unsent "
        "captures are kept, new captures are refused until there is room"
    )


@dataclass(frozen=True)
class StoreStats:
    queued: int  # in outbox/
    oldest_unsent_age_s: float | None
    awaiting_commitment: int
    sent_kept: int
    failed: int
    used_bytes: int
    quota_bytes: int


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    tmp = (tmp_dir or path.parent) / (path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # disk full, I/O error: leave nothing half-written
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class CaptureStore:
    def __init__(self, root: Path, quota_bytes: int, retention_s: float, owner: bool = True) -> None:
        """``owner``: the daemon, which removes unfinished writes at start; the CLI is not (the daemon
        may be writing right now)."""
        self.root = Path(root)
        self.quota_bytes = int(quota_bytes)
        self.retention_s = float(retention_s)
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.tmp, self.outbox, self.stored, self.sent, self.failed = (self.root / n for n in FOLDERS)
        for partial in self.tmp.iterdir() if owner else ():  # a write the daemon did not finish
            with contextlib.suppress(OSError):
                partial.unlink()

    # --- writing ----------------------------------------------------------------------------------

    def write(self, name: str, data: bytes) -> Path:
        """Put a new capture in the outbox (durable when this returns); raises :class:`QuotaFullError`,
        or :class:`DiskFullError` when the filesystem has no room (nothing of the capture left behind)."""
        self._make_room(len(data))
        path = self.outbox / name
        try:
            atomic_write(path, data, self.tmp)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                raise disk_full_error(self.root, e) from e
            raise
        return path

    def _make_room(self, size: int) -> None:
        used = self.used_bytes()
        if used + size <= self.quota_bytes:
            return
        for old in self._files(self.sent):  # oldest first: the PACS confirmed these
            used -= _size(old)
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
            if used + size <= self.quota_bytes:
                return
        raise QuotaFullError(
            f"captures quota full: {used / 1e6:.1f} MB of {self.quota_bytes / 1e6:.1f} MB used by captures "
            f"not yet confirmed by the PACS; new captures are refused until they are sent"
        )

    # --- the queue --------------------------------------------------------------------------------

    def pending(self) -> list[Path]:
        """Unsent captures, oldest first (names start with the UTC time of the capture)."""
        return self._files(self.outbox)

    def mark_sent(self, path: Path) -> None:
        """The PACS confirmed ``path``: keep it in sent/ for the retention time, or delete it now."""
        try:
            if self.retention_s <= 0:
                path.unlink()
            else:
                os.replace(path, self.sent / path.name)
                fsync_dir(self.sent)
            fsync_dir(self.outbox)
        except FileNotFoundError:
            pass  # another sender (``sonoguide captures send``) got there first

    def mark_stored(self, path: Path) -> Path:
        """C-STORE succeeded, Storage Commitment asked for: wait in stored/ (still not deleted)."""
        target = self.stored / path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            fsync_dir(self.stored)
            fsync_dir(self.outbox)
        return target

    def awaiting_commitment(self) -> list[Path]:
        return self._files(self.stored)

    def find_stored(self, sop_instance_uid: str) -> Path | None:
        found = list(self.stored.glob(f"*-{sop_instance_uid}.dcm"))
        return found[0] if found else None

    def requeue(self, path: Path) -> None:
        """Back to the outbox (the PACS could not commit it: send it again)."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, self.outbox / path.name)
            fsync_dir(self.outbox)

    def mark_failed(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, self.failed / path.name)
            fsync_dir(self.failed)
            fsync_dir(self.outbox)

    def requeue_failed(self) -> int:
        """Put every failed capture back in the outbox (a technician fixed the PACS side)."""
        moved = 0
        for path in self._files(self.failed):
            os.replace(path, self.outbox / path.name)
            moved += 1
        if moved:
            fsync_dir(self.outbox)
        return moved

    def expire(self, now: float | None = None) -> int:
        """Delete sent captures older than the retention time; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for path in self._files(self.sent):
            try:
                if now - path.stat().st_mtime > self.retention_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # --- looking ----------------------------------------------------------------------------------

    def all_captures(self) -> dict[str, list[Path]]:
        return {
            "outbox": self.pending(),
            "stored": self.awaiting_commitment(),
            "sent": self._files(self.sent),
            "failed": self._files(self.failed),
        }

    def used_bytes(self) -> int:
        folders = (self.outbox, self.stored, self.sent, self.failed)
        return sum(_size(p) for folder in folders for p in self._files(folder))

    def stats(self, now: float | None = None) -> StoreStats:
        now = time.time() if now is None else now
        pending = self.pending()
        oldest = None
        if pending:
            with contextlib.suppress(FileNotFoundError):
                oldest = max(0.0, now - pending[0].stat().st_mtime)
        return StoreStats(
            queued=len(pending),
            oldest_unsent_age_s=oldest,
            awaiting_commitment=len(self.awaiting_commitment()),
            sent_kept=len(self._files(self.sent)),
            failed=len(self._files(self.failed)),
            used_bytes=self.used_bytes(),
            quota_bytes=self.quota_bytes,
        )

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
        except FileNotFoundError:
            return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
