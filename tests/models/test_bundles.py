"""Signed model bundles and the store, with the shipped model, real Ed25519 keys and real ONNX Runtime.

Each bad input of issue 15 is refused with a message naming the problem, and the store (a real one:
version 1.6.0 installed and active, the factory model previous) is byte-identical before and after.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from packaging.version import Version

from models.clip_head import head_onnx
from models.manifest import sha256
from service.model_store import ModelStoreError
from service.model_store.bundle import MANIFEST, SIGNATURE, verify_folder, write_tar
from service.model_store.golden import CLIP_UNITS
from service.model_store.keys import REVOKED_FILE, Trust
from service.model_store.store import ModelStore, StoreBusyError
from tests.clip_models import K, random_weights
from tests.model_bundles import (
    FACTORY_VERSION,
    Vendor,
    golden_loader,
    hostile,
    lying_header,
    make_store,
    members_of,
    model_files,
    rewrite,
    shipped_golden,
    snapshot,
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # The updates here must be newer than the factory model, the downgrade older (a new model ships).
    assert Version("1.3.0") < Version(FACTORY_VERSION) < Version("1.6.0"), FACTORY_VERSION
    root = tmp_path_factory.mktemp("bundles")
    vendor = Vendor(root)
    good = vendor.bundle(root / "1.6.0.sgb", "1.6.0")
    template = make_store(root / "store-template")
    template.install(good, vendor.trust, golden_loader)
    template.activate("1.6.0", vendor.trust)
    nxt = vendor.bundle(root / "1.7.0.sgb", "1.7.0")  # a good bundle of a version not installed yet
    return {"root": root, "vendor": vendor, "good": good, "next": nxt, "template": template.root}


@pytest.fixture
def store(kit: dict[str, Any], tmp_path: Path) -> ModelStore:
    shutil.copytree(kit["template"], tmp_path / "store")
    return make_store(tmp_path / "store")


def refused(
    store: ModelStore, bundle: Path, trust: Trust, fragment: str, serving: Trust | None = None, **kwargs: Any
) -> str:
    before = snapshot(store.root)
    with pytest.raises(ModelStoreError) as info:
        store.install(bundle, trust, golden_loader, **kwargs)
    assert fragment in str(info.value), str(info.value)
    assert snapshot(store.root) == before, "a refused install changed the store"
    # The old version still serves: it verifies and stays active.
    state, folder, notes = store.resolve_active(serving or trust)
    assert state.active == "1.6.0" and folder == store.versions / "1.6.0" / "model" and not notes
    return str(info.value)


def test_install_activate_rollback_remove_and_list(kit: dict[str, Any], tmp_path: Path) -> None:
    vendor: Vendor = kit["vendor"]
    store = make_store(tmp_path / "store")
    result = store.install(kit["good"], vendor.trust, golden_loader)
    assert result["version"] == "1.6.0" and result["key_id"] == vendor.key.key_id
    assert result["golden"]["vectors"] == len(shipped_golden()["vectors"])
    assert verify_folder(store.versions / "1.6.0", vendor.trust).version == "1.6.0"
    assert store.read_state().active is None  # installed, not active: the factory model still serves
    store.activate("1.6.0", vendor.trust)
    entries = {(e.version, e.where): e for e in store.entries(vendor.trust)}
    assert entries["1.6.0", "store"].active and entries[FACTORY_VERSION, "factory"].previous
    assert all(e.ok for e in entries.values())
    with pytest.raises(ModelStoreError, match="is active"):
        store.remove("1.6.0")
    assert store.rollback(vendor.trust).active is None
    assert store.resolve_active(vendor.trust)[1] == store.factory.folder
    store.remove("1.6.0")
    assert not (store.versions / "1.6.0").exists() and store.read_state().previous is None
    assert [e.version for e in store.entries(vendor.trust)] == [FACTORY_VERSION]


def test_downgrade_refused_unless_asked(kit: dict[str, Any], store: ModelStore) -> None:
    vendor: Vendor = kit["vendor"]
    old = vendor.bundle(kit["root"] / "1.3.0.sgb", "1.3.0")
    refused(store, old, vendor.trust, "older than the active 1.6.0")
    store.install(old, vendor.trust, golden_loader, allow_downgrade=True)
    with pytest.raises(ModelStoreError, match="older than the active"):
        store.activate("1.3.0", vendor.trust)
    assert store.activate("1.3.0", vendor.trust, allow_downgrade=True).active == "1.3.0"


def test_truncated_corrupt_and_not_a_bundle(kit: dict[str, Any], store: ModelStore, tmp_path: Path) -> None:
    trust, raw = kit["vendor"].trust, kit["next"].read_bytes()
    for cut in (len(raw) // 2, 200, 0):
        (tmp_path / "cut.sgb").write_bytes(raw[:cut])
        refused(store, tmp_path / "cut.sgb", trust, "truncated" if cut else "not a model bundle")
    corrupt = bytearray(raw)
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        corrupt[i] ^= 0xA5
    (tmp_path / "corrupt.sgb").write_bytes(bytes(corrupt))
    message = refused(store, tmp_path / "corrupt.sgb", trust, "")
    assert "corrupt" in message or "sha256" in message, message
    (tmp_path / "text.sgb").write_bytes(b"hello, this is not a bundle\n")
    refused(store, tmp_path / "text.sgb", trust, "not gzip-compressed")
    os.mkfifo(tmp_path / "fifo.sgb")  # would block an open() for ever
    refused(store, tmp_path / "fifo.sgb", trust, "not a regular file")
    refused(store, Path("/dev/zero"), trust, "not a regular file")


def test_a_file_changed_after_signing(kit: dict[str, Any], store: ModelStore, tmp_path: Path) -> None:
    trust = kit["vendor"].trust

    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "model/model.int8.onnx" else data

    refused(
        store,
        rewrite(kit["next"], tmp_path / "changed.sgb", flip),
        trust,
        "model/model.int8.onnx does not match its sha256",
    )

    def relabel(name: str, data: bytes) -> bytes:
        return data.replace(b'"version": "1.7.0"', b'"version": "1.9.0"') if name == MANIFEST else data

    refused(store, rewrite(kit["next"], tmp_path / "relabel.sgb", relabel), trust, "changed after signing")


def test_unknown_revoked_and_expired_keys_and_unsigned(
    kit: dict[str, Any], store: ModelStore, tmp_path: Path
) -> None:
    trust: Trust = kit["vendor"].trust
    stranger = Vendor(tmp_path / "stranger", "stranger")
    refused(store, stranger.bundle(tmp_path / "s.sgb"), trust, f"unknown key {stranger.key.key_id}")
    # Revoked: the key file is still there, the revocation list wins.
    revoked = Vendor(tmp_path / "revoked", "revoked")
    (revoked.trustdir / REVOKED_FILE).write_text(f"# leaked 2026-11\n{revoked.key.key_id}\n")
    refused(
        store, revoked.bundle(tmp_path / "r.sgb"), revoked.trust, f"revoked key {revoked.key.key_id}", trust
    )
    # Expired key: made two years ago, valid for one.
    past = datetime.now(timezone.utc) - timedelta(days=730)
    old = Vendor(tmp_path / "old", "old", now=past, valid_days=365)
    refused(
        store, old.bundle(tmp_path / "o.sgb", now=past), old.trust, f"expired key {old.key.key_id}", trust
    )
    # Expired signature with a valid key.
    stale = kit["vendor"].bundle(
        tmp_path / "stale.sgb", now=datetime.now(timezone.utc) - timedelta(days=3), valid_days=1
    )
    refused(store, stale, trust, "signature expired")
    # Self-consistent but unsigned: the manifest without its signature, or no manifest at all.
    members = members_of(kit["next"])
    write_tar(tmp_path / "nosig.sgb", [m for m in members if m[0] != "bundle.sig"])
    refused(store, tmp_path / "nosig.sgb", trust, "not signed")
    write_tar(tmp_path / "bare.sgb", [m for m in members if not m[0].startswith("bundle.")])
    refused(store, tmp_path / "bare.sgb", trust, "not signed")


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("absolute", "absolute path"),
        ("dotdot", "'..'"),
        ("symlink", "symbolic link"),
        ("hardlink", "hard link"),
        ("device", "device file"),
        ("fifo", "FIFO"),
    ],
)
def test_hostile_archive_members(
    kit: dict[str, Any], store: ModelStore, tmp_path: Path, kind: str, fragment: str
) -> None:
    info = tarfile.TarInfo(
        {"absolute": "/etc/cron.d/x", "dotdot": "model/../../../etc/x"}.get(kind, "model/extra")
    )
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "model/model.int8.onnx"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    bundle = hostile(kit["next"], tmp_path / f"{kind}.sgb", info, b"#!/bin/sh\n")
    message = refused(store, bundle, kit["vendor"].trust, fragment)
    assert "hostile archive" in message
    assert not (tmp_path / "etc").exists()


def test_decompression_bombs_and_lying_sizes(kit: dict[str, Any], store: ModelStore, tmp_path: Path) -> None:
    vendor: Vendor = kit["vendor"]
    # A header declaring 64 GiB for the manifest, a few real bytes behind it: refused before reading.
    refused(
        store,
        lying_header(tmp_path / "bomb.sgb", MANIFEST, 64 << 30, b"{" * 4096),
        vendor.trust,
        "at most 1048576",
    )
    # Signed sizes far beyond any model, and beyond the free space of the store's disk.
    files = model_files("1.7.0")
    huge = vendor.bundle(tmp_path / "huge.sgb", "1.7.0", files)

    def claim(size: int) -> Path:
        """The same files, the signed manifest claiming ``size`` bytes for the model (re-signed)."""
        members = dict(members_of(huge))
        manifest = json.loads(members[MANIFEST])
        manifest["files"]["model/model.int8.onnx"]["size"] = size
        body = json.dumps(manifest).encode()
        sig = {
            "key_id": vendor.key.key_id,
            "algorithm": "ed25519",
            "signature": base64.b64encode(vendor.private.sign(body)).decode(),
        }
        out = tmp_path / f"claim-{size}.sgb"
        rest = [(n, d) for n, d in members.items() if not n.startswith("bundle.")]
        write_tar(out, [(MANIFEST, body), (SIGNATURE, json.dumps(sig).encode()), *rest])
        return out

    refused(store, claim(500 << 30), vendor.trust, "more than the 2147 MB a model may have")
    free = shutil.disk_usage(store.root).free
    store.max_total = 1 << 60
    refused(store, claim(free + 1), vendor.trust, "not enough free space")
    store.max_total = 2 << 30
    # A member whose header declares more than the signed size.
    with tarfile.open(tmp_path / "lie.sgb", "w:gz") as tar:
        for name, data in members_of(huge):
            info = tarfile.TarInfo(name)
            info.size = len(data) + (1000 if name == "golden.json" else 0)
            tar.addfile(info, io.BytesIO(data + (b" " * 1000 if name == "golden.json" else b"")))
    refused(store, tmp_path / "lie.sgb", vendor.trust, "but the signed manifest says")


def test_incompatible_models(kit: dict[str, Any], store: ModelStore, tmp_path: Path) -> None:
    vendor: Vendor = kit["vendor"]

    def nhwc(m: dict[str, Any]) -> None:
        m["inputs"][0]["layout"] = "NHWC"
        m["inputs"][0]["shape"] = [1, 128, 128, 1]

    def newer(m: dict[str, Any]) -> None:
        m["min_service_version"] = "9.0.0"

    def unit(m: dict[str, Any]) -> None:
        next(o for o in m["outputs"] if o["name"] == "correction_mm")["unit"] = "cm"

    def preset(m: dict[str, Any]) -> None:
        m["guidance"]["prior"]["brain"] = m["guidance"]["prior"]["abdomen"]

    for edit, fragment in [
        (nhwc, "input contract"),
        (newer, "needs service 9.0.0"),
        (unit, "'correction_mm' must be declared in 'mm'"),
        (preset, "['brain'] are unknown"),
    ]:
        bundle = vendor.bundle(tmp_path / f"{edit.__name__}.sgb", "1.7.0", model_files("1.7.0", edit))
        message = refused(store, bundle, vendor.trust, fragment)
        assert message.startswith("incompatible model"), message


def test_golden_vectors_out_of_tolerance(kit: dict[str, Any], store: ModelStore, tmp_path: Path) -> None:
    golden = json.loads(json.dumps(shipped_golden()))
    golden["vectors"][1]["int8"]["gain_error_db"][0] += 3.0  # what the vendor saw is not what runs here
    files = {**model_files("1.7.0"), "golden.json": json.dumps(golden).encode()}
    bundle = kit["vendor"].bundle(tmp_path / "golden.sgb", "1.7.0", files)
    refused(
        store,
        bundle,
        kit["vendor"].trust,
        "golden vectors out of tolerance on CPUExecutionProvider: gain_error_db off by",
    )


def test_golden_vectors_check_the_clip_head_and_older_vectors_without_it_still_check(
    kit: dict[str, Any], store: ModelStore, tmp_path: Path
) -> None:
    golden = shipped_golden()
    assert "clip_correction_deg" in golden["vectors"][0]["int8"] and "clip_sd_mm" in golden["tolerance"]
    # Another head under the same name, the manifest re-hashed and the bundle signed: every hash and the
    # signature hold, and only the golden vectors can tell that the head is not the one the vendor ran.
    head = tmp_path / "other_head.onnx"
    onnx.save(head_onnx(random_weights(5), np.ones(6), K), str(head))

    def rehash(manifest: dict[str, Any]) -> None:
        manifest["files"]["clip_head.onnx"] = sha256(head)

    files = {**model_files("1.7.0", rehash), "model/clip_head.onnx": head.read_bytes()}
    swapped = kit["vendor"].bundle(tmp_path / "swapped.sgb", "1.7.0", files)
    refused(
        store, swapped, kit["vendor"].trust, "golden vectors out of tolerance on CPUExecutionProvider: clip_"
    )
    # Vectors written before heads had golden outputs check the frame outputs, as before.
    older = json.loads(json.dumps(golden))
    for vector in older["vectors"]:
        for key in CLIP_UNITS:
            vector["int8"].pop(key), vector["fp32"].pop(key)
    files = {**model_files("1.7.0"), "golden.json": json.dumps(older).encode()}
    result = store.install(
        kit["vendor"].bundle(tmp_path / "older.sgb", "1.7.0", files), kit["vendor"].trust, golden_loader
    )
    assert result["version"] == "1.7.0" and not set(result["golden"]["worst"]) & set(CLIP_UNITS)


def test_a_second_install_while_one_runs(kit: dict[str, Any], store: ModelStore) -> None:
    vendor: Vendor = kit["vendor"]
    bundle = vendor.bundle(kit["root"] / "1.8.0.sgb", "1.8.0")
    in_golden, release = threading.Event(), threading.Event()

    def slow_loader(folder: Path) -> tuple[Any, str]:
        in_golden.set()  # the first install holds the lock here
        assert release.wait(30)
        return golden_loader(folder)

    errors: list[BaseException] = []

    def first() -> None:
        try:
            store.install(bundle, vendor.trust, slow_loader)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert in_golden.wait(30)
        before = snapshot(store.root)
        other = make_store(store.root)
        with pytest.raises(StoreBusyError, match="another install or activation is running"):
            other.install(kit["good"], vendor.trust, golden_loader)
        with pytest.raises(StoreBusyError):
            other.activate("factory", vendor.trust, allow_downgrade=True)
        assert snapshot(store.root) == before
    finally:
        release.set()
        t.join(60)
    assert not errors and (store.versions / "1.8.0").is_dir()


def test_an_installed_version_damaged_or_its_key_revoked_is_not_served(
    kit: dict[str, Any], store: ModelStore
) -> None:
    vendor: Vendor = kit["vendor"]
    onnx = store.versions / "1.6.0" / "model" / "model.int8.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])
    _, folder, notes = store.resolve_active(vendor.trust)
    assert folder == store.factory.folder and "does not match its signed sha256" in notes[0]
    listed = {e.version: e for e in store.entries(vendor.trust) if e.where == "store"}
    assert not listed["1.6.0"].ok and "sha256" in listed["1.6.0"].problem
    (vendor.trustdir / REVOKED_FILE).write_text(vendor.key.key_id + "\n")
    try:
        with pytest.raises(ModelStoreError, match="revoked key"):
            verify_folder(kit["template"] / "versions" / "1.6.0", vendor.trust)
    finally:
        (vendor.trustdir / REVOKED_FILE).unlink()


def test_a_version_left_on_probation_is_rolled_back_at_start(kit: dict[str, Any], store: ModelStore) -> None:
    vendor: Vendor = kit["vendor"]
    store.rollback(vendor.trust)  # factory active, 1.6.0 previous
    store.activate("1.6.0", vendor.trust, trial=True)  # the daemon died during the probation
    state, folder, notes = store.resolve_active(vendor.trust)
    assert state.active is None and folder == store.factory.folder and "probation" in notes[0]
    assert store.read_state().as_dict() == {"active": None, "previous": "1.6.0", "trial": False}
