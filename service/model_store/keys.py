"""Vendor signing keys (Ed25519): key pairs, the device's trusted keys and its revocation list.

On the vendor's machine: ``NAME.key`` (PKCS#8 PEM, mode 0600; never leaves it) and ``NAME.pub.json``
(the public key with its id, owner and expiry). On the device, in the config directory (read-only to
the service): ``model-keys/*.pub.json`` are trusted, and ``model-keys/revoked-keys.txt`` lists key ids
that are never trusted again (one per line, ``#`` comments), whatever the key files say.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key, so it names the key
itself, not a file name someone chose.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.model_store import ModelStoreError

REVOKED_FILE = "revoked-keys.txt"
PUBLIC_SUFFIX = ".pub.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, what: str) -> datetime:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ModelStoreError(f"{what} {text!r} is not a UTC time like 2027-01-31T00:00:00Z") from None


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    owner: str
    public: Ed25519PublicKey
    expires: datetime
    source: str  # the file it came from, for messages

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def keygen(directory: Path, name: str, valid_days: int = 730, now: datetime | None = None) -> TrustedKey:
    """A new key pair in ``directory``: ``NAME.key`` (private, 0600) and ``NAME.pub.json``. Never overwrites."""
    if not _NAME.match(name):
        raise ModelStoreError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if valid_days < 1:
        raise ModelStoreError(f"a key must be valid for at least a day, got {valid_days}")
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}{PUBLIC_SUFFIX}"
    for p in (private_path, public_path):
        if p.exists():
            raise ModelStoreError(f"{p} exists; choose another name (keys are never overwritten)")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    now = now or utc_now()
    key = TrustedKey(
        key_id_of(private.public_key()),
        name,
        private.public_key(),
        now + timedelta(days=valid_days),
        str(public_path),
    )
    public_path.write_text(json.dumps(public_record(key, now), indent=2) + "\n")
    return key


def public_record(key: TrustedKey, created: datetime) -> dict[str, str]:
    raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "key_id": key.key_id,
        "algorithm": "ed25519",
        "owner": key.owner,
        "public_key": base64.b64encode(raw).decode(),
        "created": format_time(created),
        "expires": format_time(key.expires),
    }


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ModelStoreError(f"private key {path} does not exist") from None
    except (ValueError, TypeError) as exc:
        raise ModelStoreError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelStoreError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> TrustedKey:
    """One ``*.pub.json`` file, its key id checked against the key it holds."""
    try:
        record = json.loads(path.read_text())
        raw = base64.b64decode(record["public_key"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
        stated, owner, expires = str(record["key_id"]), str(record["owner"]), record["expires"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelStoreError(f"public key file {path} is unreadable: {exc}") from None
    if record.get("algorithm") != "ed25519":
        raise ModelStoreError(f"public key file {path}: algorithm must be ed25519")
    if key_id_of(public) != stated:
        raise ModelStoreError(f"public key file {path}: key_id {stated} does not match the key it holds")
    return TrustedKey(stated, owner, public, parse_time(expires, f"{path}: expires"), str(path))


@dataclass(frozen=True)
class Trust:
    """What this device trusts: keys by id, and the ids revoked."""

    keys: dict[str, TrustedKey]
    revoked: frozenset[str]
    directory: str

    @classmethod
    def load(cls, directory: Path) -> Trust:
        """The trusted keys in ``directory``; an unreadable key file is an error (naming it), not skipped."""
        keys: dict[str, TrustedKey] = {}
        if directory.is_dir():
            for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
                key = load_public_key(path)
                keys[key.key_id] = key
        revoked: set[str] = set()
        rpath = directory / REVOKED_FILE
        if rpath.is_file():
            for line in rpath.read_text().splitlines():
                word = line.split("#", 1)[0].strip()
                if word:
                    revoked.add(word)
        return cls(keys, frozenset(revoked), str(directory))

    def key_for(self, key_id: str, now: datetime) -> TrustedKey:
        """The trusted, unrevoked, unexpired key with this id, or an error saying which of those it is not."""
        if key_id in self.revoked:
            raise ModelStoreError(
                f"signed by revoked key {key_id} (listed in {self.directory}/{REVOKED_FILE})"
            )
        key = self.keys.get(key_id)
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none"
            raise ModelStoreError(
                f"signed by unknown key {key_id}: not among the trusted keys in {self.directory} (trusted: {known})"
            )
        if now > key.expires:
            raise ModelStoreError(
                f"signed by expired key {key_id} ({key.owner}): it expired at {format_time(key.expires)}"
            )
        return key
