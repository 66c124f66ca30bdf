"""``sonoguide captures list|send|export``: the captures on this device, for a technician.

Works on the captures folder directly (``[captures] dir`` of the config), with or without the daemon
running: ``send`` takes the same outbox the daemon's sender takes (the PACS keeps one copy of an
instance sent twice, by its SOP Instance UID); ``export`` writes copies, de-identified on request,
and never moves or deletes an original.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default /etc/sonoguide/config.toml)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="captures folder (default: from the config)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every capture on the device: unsent, sent (kept), failed")
    ls.add_argument("--json", action="store_true")
    send = sub.add_parser("send", help="send the unsent captures to the configured PACS now")
    send.add_argument(
        "--failed", action="store_true", help="put the captures the PACS refused back in the queue first"
    )
    export = sub.add_parser("export", help="copy captures to a folder (e.g. a USB stick)")
    export.add_argument("out", type=Path)
    export.add_argument("--deidentify", action="store_true", help="remove the patient's identity (teaching)")
    export.add_argument("--salt", default="", help="pseudonym salt (default: the device id)")


def _load(args: argparse.Namespace) -> tuple[Any, Path]:
    from service.daemon.captures import captures_dir
    from service.daemon.config import DEFAULT_CONFIG_PATH, load_config

    path = args.config or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None)
    config = load_config(path)
    return config, args.dir or captures_dir(config.captures)


def run(args: argparse.Namespace) -> int:
    from service.daemon.config import ConfigError

    try:
        config, folder = _load(args)
    except ConfigError as e:
        print(f"sonoguide: {e}", file=sys.stderr)
        return 2
    if not folder.is_dir():
        print(f"sonoguide: no captures folder at {folder}", file=sys.stderr)
        return 1
    from service.daemon.capture_store import CaptureStore

    # Not the owner: the daemon may be writing into tmp/ right now, its .part files are left alone.
    store = CaptureStore(
        folder, int(config.captures.quota_mb * 1e6), config.captures.retention_days * 86400, owner=False
    )
    if args.action == "list":
        return _list(store, args.json)
    if args.action == "send":
        return _send(store, config, args.failed)
    return _export(store, args.out, args.deidentify, args.salt or config.device.id, config.captures.uid_root)


def _describe(path: Path) -> dict[str, Any]:
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True)
        return {
            "file": path.name, "sop_instance_uid": str(ds.SOPInstanceUID), "patient_id": str(ds.PatientID),
            "study_instance_uid": str(ds.StudyInstanceUID), "acquired": str(ds.get("AcquisitionDateTime", "")),
            "bytes": path.stat().st_size,
        }  # fmt: skip
    except Exception as e:
        return {"file": path.name, "error": f"unreadable: {e}"}


def _list(store: Any, as_json: bool) -> int:
    listing = {state: [_describe(p) for p in paths] for state, paths in store.all_captures().items()}
    stats = store.stats()
    if as_json:
        print(
            json.dumps(
                {"captures": listing, "used_bytes": stats.used_bytes, "quota_bytes": stats.quota_bytes},
                indent=2,
            )
        )
        return 0
    for state, items in listing.items():
        for item in items:
            detail = (
                item.get("error")
                or f"{item['acquired']}  patient {item['patient_id']}  {item['sop_instance_uid']}"
            )
            print(f"{state:7} {detail}")
    oldest = (
        "" if stats.oldest_unsent_age_s is None else f", oldest unsent {stats.oldest_unsent_age_s:.0f} s old"
    )
    print(
        f"{stats.queued} unsent{oldest}, {stats.sent_kept} sent (kept), {stats.failed} failed; "
        f"{stats.used_bytes / 1e6:.1f} of {stats.quota_bytes / 1e6:.0f} MB"
    )
    return 0


def _send(store: Any, config: Any, failed: bool) -> int:
    from service.daemon.captures import pacs_address
    from service.daemon.pacs_client import PacsUnavailableError, store_files

    address = pacs_address(config.pacs)
    if address is None:
        print("sonoguide: no PACS configured ([pacs] host): nothing to send to", file=sys.stderr)
        return 2
    if failed:
        print(f"{store.requeue_failed()} failed capture(s) put back in the queue")
    pending = store.pending()
    sent = refused = 0
    try:
        for outcome in store_files(address, pending):
            if outcome.ok:
                # With Storage Commitment the daemon asks for it and deletes only once committed.
                store.mark_stored(outcome.path) if config.pacs.commitment else store.mark_sent(outcome.path)
                sent += 1
            else:
                refused += 1
                if outcome.permanent:
                    store.mark_failed(outcome.path)
                print(f"{outcome.path.name}: {outcome.reason}", file=sys.stderr)
    except PacsUnavailableError as e:
        print(f"sonoguide: {e}; {len(store.pending())} capture(s) still queued", file=sys.stderr)
        return 1
    waiting = " (their storage commitment: asked by the daemon)" if config.pacs.commitment else ""
    print(f"{sent} of {len(pending)} capture(s) stored on {address.describe()}{waiting}")
    return 0 if refused == 0 else 1


def _export(store: Any, out: Path, deid: bool, salt: str, uid_root: str) -> int:
    import io

    from pydicom import dcmread

    from service.daemon.capture_dicom import deidentify
    from service.daemon.capture_store import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for paths in store.all_captures().values():
        for path in paths:
            ds: Any = dcmread(path)
            if deid:
                ds = deidentify(ds, salt, uid_root)
            target = out / f"{ds.SOPInstanceUID}.dcm"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            atomic_write(target, buf.getvalue())
            count += 1
    print(f"{count} capture(s) exported to {out}" + (" (de-identified)" if deid else ""))
    return 0
