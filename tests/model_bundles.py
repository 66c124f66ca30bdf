"""Test helpers for model bundles: a vendor with fresh Ed25519 keys, bundles of the shipped model under
other version numbers (real files, real golden vectors computed once from the shipped model), hostile
archives written member by member, and a byte-level snapshot of a store folder."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from service import __version__
from service.daemon.mqtt_commands import PRESET_SETTINGS
from service.daemon.onnx_model import OnnxModel, shipped_model_dir
from service.model_store.bundle import MANIFEST, SIGNATURE, pack, write_tar
from service.model_store.golden import golden_inputs, make_golden
from service.model_store.keys import Trust, keygen, load_private_key
from service.model_store.store import Factory, ModelStore

SHIPPED = shipped_model_dir()
# The factory model's version. Bundles in the tests are numbered above it (1.6.0, 1.7.0, ...) and one
# below it (1.3.0) for downgrades: shipping a newer model means moving them up.
FACTORY_VERSION = json.loads((SHIPPED / "manifest.json").read_text())["version"]


@functools.cache
def shipped_golden() -> dict[str, Any]:
    int8 = OnnxModel(SHIPPED, ("cpu",))
    fp32 = OnnxModel(
        SHIPPED, ("cpu",), model_file=json.loads((SHIPPED / "manifest.json").read_text())["reference_file"]
    )
    return make_golden(golden_inputs(), int8.golden_run, fp32.golden_run)


def model_files(version: str, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, bytes]:
    """The shipped model's files as bundle members, its manifest saying ``version`` (and ``edit``ed)."""
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    manifest["version"] = version
    if edit is not None:
        edit(manifest)
    files = {f"model/{n}": (SHIPPED / n).read_bytes() for n in manifest["files"]}
    files["model/manifest.json"] = json.dumps(manifest, indent=2).encode()
    files["golden.json"] = json.dumps(shipped_golden()).encode()
    return files


def golden_loader(folder: Path) -> tuple[Any, str]:
    model = OnnxModel(folder, ("cpu",))
    return model.golden_run, model.provider


class Vendor:
    """A vendor key pair and a device's trusted-keys folder that trusts it."""

    def __init__(
        self, root: Path, name: str = "vendor", now: datetime | None = None, valid_days: int = 730
    ) -> None:
        self.keydir, self.trustdir = root / f"{name}-keys", root / "trusted"
        self.key = keygen(self.keydir, name, valid_days, now)
        self.private = load_private_key(self.keydir / f"{name}.key")
        self.trustdir.mkdir(exist_ok=True)
        (self.trustdir / f"{name}.pub.json").write_bytes(Path(self.key.source).read_bytes())

    @property
    def trust(self) -> Trust:
        return Trust.load(self.trustdir)

    def bundle(
        self, out: Path, version: str = "1.6.0", files: dict[str, bytes] | None = None, **kwargs: Any
    ) -> Path:
        files = files if files is not None else model_files(version)
        manifest = json.loads(files["model/manifest.json"])
        meta = {
            "name": manifest["name"],
            "version": version,
            "min_service_version": manifest["min_service_version"],
        }
        pack(files, self.private, out, meta, **kwargs)
        return out


def members_of(bundle: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(bundle, "r:gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def rewrite(bundle: Path, out: Path, change: Callable[[str, bytes], bytes]) -> Path:
    """The same members in the same order, each passed through ``change`` (signature untouched)."""
    write_tar(out, [(n, change(n, d)) for n, d in members_of(bundle)])
    return out


def hostile(bundle: Path, out: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    """The signed bundle with one more member after its signature (a link, a device, a bad name)."""
    members = members_of(bundle)
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i, (name, body) in enumerate(members):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
            if i == 1:
                extra.size = len(data) if extra.isfile() else 0
                tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return out


def lying_header(out: Path, name: str, declared: int, real: bytes) -> Path:
    """A gzip tar whose only member's header declares ``declared`` bytes while ``real`` follow."""
    info = tarfile.TarInfo(name)
    info.size = declared
    with gzip.open(out, "wb") as f:
        f.write(info.tobuf(tarfile.PAX_FORMAT))
        f.write(real)
    return out


def make_store(root: Path) -> ModelStore:
    return ModelStore(root, Factory.from_folder(SHIPPED), __version__, tuple(PRESET_SETTINGS))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders as "dir"): byte-identical or not."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


__all__ = ["MANIFEST", "SIGNATURE"]
