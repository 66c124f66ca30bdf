"""The model bundle: one signed file per model version, and its streaming verify-and-extract.

A bundle is a gzip tar whose members come in this order:

- ``bundle.json``: the signed manifest: ``format``, ``name``, ``version``, ``min_service_version``,
  ``files`` (every other member: ``{path: {"sha256", "size"}}``) and ``signature`` (``key_id``,
  ``algorithm``, ``signed_at``, ``expires``): what is signed says by whom and until when;
- ``bundle.sig``: ``{"key_id", "algorithm": "ed25519", "signature": base64}``, an Ed25519 signature
  over the exact bytes of ``bundle.json``;
- ``model/...`` (the model folder: ONNX files, its own manifest, the model card) and ``golden.json``.

Reading trusts nothing before the signature: members are read in one pass (no seeking, no
``extractall``); each must be a regular file with a plain relative name; the manifest and signature
are size-capped and verified first (key trusted, not revoked, not expired; signature not expired);
then every other member must be listed, its header size equal to the signed size (the declared total
capped and within free space, so a decompression bomb is refused before it is inflated), and is
copied with at most that many bytes while hashed; a file missing at the end is a truncated bundle.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.model_store import ModelStoreError
from service.model_store.keys import Trust, format_time, key_id_of, parse_time, utc_now

FORMAT = "sonoguide-bundle/1"
MANIFEST, SIGNATURE = "bundle.json", "bundle.sig"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 1 << 14
MAX_TOTAL_BYTES = 2 << 30  # no model version of ours comes near 2 GiB unpacked
FREE_SPACE_MARGIN = 64 << 20  # what an install leaves free on the state partition at least
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
VERSION = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$")


def check_name(name: str) -> str | None:
    """The problem with a member name, or None: relative, no ``..``, only plain characters."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return f"{name!r} climbs out of the bundle with '..'"
    if not all(_PART.match(p) for p in parts):
        return f"{name!r} is not a plain relative file name"
    return None


def _member_problem(m: tarfile.TarInfo) -> str | None:
    if m.issym():
        return f"member {m.name!r} is a symbolic link (to {m.linkname!r})"
    if m.islnk():
        return f"member {m.name!r} is a hard link (to {m.linkname!r})"
    if m.ischr() or m.isblk():
        return f"member {m.name!r} is a device file"
    if m.isfifo():
        return f"member {m.name!r} is a FIFO"
    if not m.isfile():
        return f"member {m.name!r} is not a regular file (tar type {m.type!r})"
    return check_name(m.name)


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: dict[str, Any]
    key_id: str
    key_owner: str

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])


# --- vendor side ---------------------------------------------------------------------------------


def pack(
    files: dict[str, bytes],
    private: Ed25519PrivateKey,
    out: Path,
    meta: dict[str, Any],
    valid_days: int = 365,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Sign a manifest over ``files`` ({bundle path: content}) and write the bundle to ``out``
    (atomically). ``meta``: ``name``, ``version``, ``min_service_version``. Returns the manifest."""
    now = now or utc_now()
    for name in files:
        problem = check_name(name)
        if problem or name in (MANIFEST, SIGNATURE):
            raise ModelStoreError(f"cannot pack {name!r}: {problem or 'reserved name'}")
    key_id = key_id_of(private.public_key())
    manifest = {
        "format": FORMAT,
        **meta,
        "files": {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in sorted(files.items())
        },
        "signature": {
            "key_id": key_id,
            "algorithm": "ed25519",
            "signed_at": format_time(now),
            "expires": format_time(now + timedelta(days=valid_days)),
        },
    }
    body = json.dumps(manifest, indent=1, sort_keys=True).encode()
    sig = {
        "key_id": key_id,
        "algorithm": "ed25519",
        "signature": base64.b64encode(private.sign(body)).decode(),
    }
    write_tar(out, [(MANIFEST, body), (SIGNATURE, json.dumps(sig).encode()), *sorted(files.items())])
    return manifest


def write_tar(out: Path, members: list[tuple[str, bytes]]) -> None:
    """A gzip tar of regular files in this order, written beside ``out`` and renamed into place."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)


# --- device side ---------------------------------------------------------------------------------


def verify_signature(
    body: bytes, sig_bytes: bytes, trust: Trust, now: datetime, check_expiry: bool = True
) -> VerifiedBundle:
    """The signed manifest, after the signature, the key and the expiry are checked."""
    try:
        sig = json.loads(sig_bytes)
        signature = base64.b64decode(sig["signature"], validate=True)
        sig_key = str(sig["key_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"{SIGNATURE} is unreadable: {exc}") from None
    if sig.get("algorithm") != "ed25519":
        raise ModelStoreError(f"{SIGNATURE}: algorithm {sig.get('algorithm')!r} is not ed25519")
    key = trust.key_for(sig_key, now)
    if not key.verify(signature, body):
        raise ModelStoreError(
            f"the signature does not match {MANIFEST} (key {sig_key}): the manifest was changed after signing"
        )
    try:
        manifest = json.loads(body)
    except ValueError as exc:  # signed garbage: still not a bundle
        raise ModelStoreError(f"{MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelStoreError(f"{MANIFEST}: format is not {FORMAT}")
    signed = manifest.get("signature") or {}
    if signed.get("key_id") != sig_key:
        raise ModelStoreError(f"{MANIFEST} names key {signed.get('key_id')} but {SIGNATURE} is by {sig_key}")
    expires = parse_time(signed.get("expires"), f"{MANIFEST}: signature expires")
    if check_expiry and now > expires:
        raise ModelStoreError(f"the bundle's signature expired at {format_time(expires)} (key {sig_key})")
    for key_name in ("name", "version", "min_service_version", "files"):
        if key_name not in manifest:
            raise ModelStoreError(f"{MANIFEST} lacks {key_name!r}")
    if not VERSION.match(str(manifest["version"])):
        raise ModelStoreError(f"{MANIFEST}: version {manifest['version']!r} is not like 1.5.0")
    files = manifest["files"]
    if not isinstance(files, dict) or "golden.json" not in files or "model/manifest.json" not in files:
        raise ModelStoreError(f"{MANIFEST}: files must list golden.json and model/manifest.json")
    for name, entry in files.items():
        problem = check_name(name)
        if problem:
            raise ModelStoreError(f"{MANIFEST} lists {problem}")
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):  # fmt: skip
            raise ModelStoreError(f"{MANIFEST}: entry for {name!r} needs sha256 and size")
    return VerifiedBundle(manifest, sig_key, key.owner)


def _read_capped(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    if member.size > cap:
        raise ModelStoreError(f"{member.name} declares {member.size} bytes; at most {cap} are allowed")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    data = f.read(cap + 1)
    if len(data) != member.size:
        raise ModelStoreError(f"the bundle is truncated inside {member.name}")
    return data


def unpack(
    bundle: Path,
    dest: Path | None,
    trust: Trust,
    now: datetime | None = None,
    check: Callable[[VerifiedBundle], None] | None = None,
    max_total: int = MAX_TOTAL_BYTES,
) -> VerifiedBundle:
    """Verify ``bundle`` and (``dest`` not None) write its files under ``dest`` (which must exist,
    empty), each fsynced. ``check`` runs on the verified manifest before any file is written.
    Raises :class:`ModelStoreError` naming the problem; what was written to ``dest`` is then the
    caller's to delete."""
    now = now or utc_now()
    if bundle.exists() and not bundle.is_file():  # a FIFO or a device would block or never end
        raise ModelStoreError(f"bundle {bundle} is not a regular file")
    try:
        fobj: IO[bytes] = bundle.open("rb")
    except OSError as exc:
        raise ModelStoreError(f"cannot read bundle {bundle}: {exc.strerror}") from None
    with fobj:
        try:
            return _unpack_stream(fobj, dest, trust, now, check, max_total)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # ours, not the archive's
                raise ModelStoreError(f"cannot write the model files: {exc}") from None
            raise ModelStoreError(
                f"the bundle is truncated or corrupt: {exc or type(exc).__name__}"
            ) from None


def _unpack_stream(
    fobj: IO[bytes],
    dest: Path | None,
    trust: Trust,
    now: datetime,
    check: Callable[[VerifiedBundle], None] | None,
    max_total: int,
) -> VerifiedBundle:
    head = fobj.read(2)
    fobj.seek(0)
    if head != b"\x1f\x8b":
        raise ModelStoreError("not a model bundle: the file is not gzip-compressed (truncated or corrupt?)")
    verified: VerifiedBundle | None = None
    body = b""
    seen: set[str] = set()
    with tarfile.open(fileobj=fobj, mode="r|gz") as tar:
        for index, member in enumerate(tar):
            problem = _member_problem(member)
            if problem:
                raise ModelStoreError(f"hostile archive: {problem}")
            if index == 0:
                if member.name != MANIFEST:
                    raise ModelStoreError(f"not signed: the first member is {member.name!r}, not {MANIFEST}")
                body = _read_capped(tar, member, MAX_MANIFEST_BYTES)
                continue
            if index == 1:
                if member.name != SIGNATURE:
                    raise ModelStoreError(f"not signed: {SIGNATURE} is missing (found {member.name!r})")
                sig = _read_capped(tar, member, MAX_SIGNATURE_BYTES)
                verified = verify_signature(body, sig, trust, now)
                _check_sizes(verified, dest, max_total)
                if check is not None:
                    check(verified)
                if dest is not None:  # kept with the version: it is re-verified at every start
                    for name, data in ((MANIFEST, body), (SIGNATURE, sig)):
                        _write_file(dest / name, data)
                continue
            assert verified is not None
            entry = verified.manifest["files"].get(member.name)
            if entry is None:
                raise ModelStoreError(f"member {member.name!r} is not in the signed manifest")
            if member.name in seen:
                raise ModelStoreError(f"member {member.name!r} appears twice")
            if member.size != entry["size"]:
                raise ModelStoreError(
                    f"member {member.name!r} declares {member.size} bytes but the signed manifest says {entry['size']}"
                )
            seen.add(member.name)
            _copy_member(tar, member, entry, dest)
    if verified is None:
        raise ModelStoreError(
            "the bundle is truncated or not signed: " + (f"{SIGNATURE} is missing" if body else "it is empty")
        )
    missing = sorted(set(verified.manifest["files"]) - seen)
    if missing:
        raise ModelStoreError(f"the bundle is truncated: {', '.join(missing)} missing")
    return verified


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_sizes(verified: VerifiedBundle, dest: Path | None, max_total: int) -> None:
    total = sum(int(e["size"]) for e in verified.manifest["files"].values())
    if total > max_total:
        raise ModelStoreError(
            f"the bundle declares {total / 1e6:.0f} MB of files; more than the {max_total / 1e6:.0f} MB a model may have"
        )
    if dest is not None:
        free = shutil.disk_usage(dest).free
        if total + FREE_SPACE_MARGIN > free:
            raise ModelStoreError(
                f"not enough free space: the bundle needs {total / 1e6:.0f} MB (+{FREE_SPACE_MARGIN >> 20} MB "
                f"margin), {free / 1e6:.0f} MB free in {dest.parent}"
            )


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict[str, Any], dest: Path | None
) -> None:
    src = tar.extractfile(member)
    assert src is not None
    h, left = hashlib.sha256(), int(entry["size"])
    out = None
    if dest is not None:
        target = dest / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # noqa: SIM115 - closed below, fsynced first
    try:
        while left > 0:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise ModelStoreError(f"the bundle is truncated inside {member.name}")
            h.update(block)
            left -= len(block)
            if out is not None:
                out.write(block)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    if h.hexdigest() != entry["sha256"]:
        raise ModelStoreError(
            f"{member.name} does not match its sha256 in the signed manifest (changed after signing)"
        )


def verify_folder(folder: Path, trust: Trust, now: datetime | None = None) -> VerifiedBundle:
    """An installed version: signature and key (revocation checked now; the signature's expiry was
    checked at install and does not stop a device that is already running it), every hash, no
    extra files."""
    now = now or utc_now()
    try:
        body, sig = (folder / MANIFEST).read_bytes(), (folder / SIGNATURE).read_bytes()
    except OSError as exc:
        raise ModelStoreError(f"{folder}: {exc.strerror}: {exc.filename}") from None
    verified = verify_signature(body, sig, trust, now, check_expiry=False)
    listed = verified.manifest["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()} - {
        MANIFEST,
        SIGNATURE,
    }
    extra = sorted(present - set(listed))
    if extra:
        raise ModelStoreError(f"{folder}: files not in the signed manifest: {', '.join(extra)}")
    for name, entry in listed.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise ModelStoreError(f"{folder}: {name} is missing")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != entry["sha256"]:
            raise ModelStoreError(f"{folder}: {name} does not match its signed sha256 (damaged or changed)")
    return verified
