"""The versioned model store under the service's state directory (``/var/lib/sonoguide/models``).

::

    models/
      versions/<version>/     one verified, complete bundle each: bundle.json, bundle.sig,
                              golden.json, model/ (the model folder the daemon loads)
      state.json              {"active": "1.5.0" | null, "previous": ..., "trial": bool}
      .incoming-<pid>-<hex>/  an install under way (deleted by the next store operation if its
                              process died)

``null`` is the factory model shipped with the service (models/<name>/<version>/), always there.
Install writes into ``.incoming-*``, fsyncs every file and the folder, then renames it to
``versions/<version>`` (atomic): a version folder is complete or absent. Activation rewrites
``state.json`` (temp file, fsync, rename, fsync the folder): the pointer is the old or the new one.
``trial`` marks a version under probation in the daemon: found set at start (the daemon died before
the probation passed), it is rolled back. One install or activation at a time: an exclusive
``flock`` on the store folder, which the kernel releases when its holder dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from service.model_store import ModelStoreError
from service.model_store.bundle import MAX_TOTAL_BYTES, VERSION, VerifiedBundle, unpack, verify_folder
from service.model_store.compat import contract_problems, version_key
from service.model_store.fsutil import atomic_write, fsync_dir
from service.model_store.golden import Runner, check_golden
from service.model_store.keys import Trust, utc_now

STATE = "state.json"
INCOMING = ".incoming-"
FACTORY = "factory"
Progress = Callable[[str], None]
# A model folder -> (a runner on this device's execution provider, that provider's name).
GoldenLoader = Callable[[Path], tuple[Runner, str]]


class StoreBusyError(ModelStoreError):
    """Another install or activation holds the store's lock."""


@dataclass(frozen=True)
class Factory:
    """The model shipped with the service: the default, and the last resort."""

    folder: Path
    name: str
    version: str

    @classmethod
    def from_folder(cls, folder: Path) -> Factory:
        m = json.loads((folder / "manifest.json").read_text())
        return cls(folder, str(m["name"]), str(m["version"]))


@dataclass
class StoreState:
    active: str | None = None  # None: the factory model
    previous: str | None = None
    trial: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"active": self.active, "previous": self.previous, "trial": self.trial}


@dataclass
class Entry:
    version: str
    where: str  # "store" | "factory"
    active: bool = False
    previous: bool = False
    ok: bool = True
    problem: str = ""
    key_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {"version": self.version, "where": self.where, "active": self.active, "previous": self.previous,
             "ok": self.ok, "key_id": self.key_id, **self.info}  # fmt: skip
        if self.problem:
            d["problem"] = self.problem
        return d


class ModelStore:
    def __init__(
        self, root: Path, factory: Factory, service_version: str, known_presets: tuple[str, ...] | None = None
    ) -> None:
        self.root = Path(root)
        self.factory = factory
        self.service_version = service_version
        self.known_presets = known_presets
        self.versions = self.root / "versions"
        self.max_total = MAX_TOTAL_BYTES  # the most a bundle may unpack to

    # --- the lock and leftovers --------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the store; refused (not waited for) while another process holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StoreBusyError(
                        f"another install or activation is running on {self.root}; try again when it ends"
                    ) from None
                raise
            self._recover()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _recover(self) -> None:
        """Remove what a process killed mid-install left (we hold the lock, so nobody is writing)."""
        for p in self.root.glob(f"{INCOMING}*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(f".{STATE}.tmp-*"):
            p.unlink(missing_ok=True)

    # --- the pointer ---------------------------------------------------------------------------------

    def read_state(self) -> StoreState:
        path = self.root / STATE
        if not path.exists():
            return StoreState()
        try:
            d = json.loads(path.read_text())
            return StoreState(d.get("active"), d.get("previous"), bool(d.get("trial", False)))
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelStoreError(
                f"{path} is unreadable ({exc}); `sonoguide model activate` rewrites it"
            ) from None

    def _write_state(self, state: StoreState) -> None:
        atomic_write(self.root / STATE, (json.dumps(state.as_dict(), indent=1) + "\n").encode())

    def version_of(self, pointer: str | None) -> str:
        return self.factory.version if pointer is None else pointer

    def model_dir(self, pointer: str | None) -> Path:
        """The model folder of a store version, or of the factory model (None)."""
        return self.factory.folder if pointer is None else self.versions / pointer / "model"

    # --- install -------------------------------------------------------------------------------------

    def install(
        self,
        bundle: Path,
        trust: Trust,
        golden: GoldenLoader,
        allow_downgrade: bool = False,
        progress: Progress | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Verify, check, extract, run the golden vectors and move the version into the store.
        Nothing in the store changes unless it all passes."""
        say = progress or (lambda _m: None)
        now = now or utc_now()
        with self.locked():
            state = self.read_state()
            active_version = self.version_of(state.active)

            def check(v: VerifiedBundle) -> None:
                say(f"signature ok: {v.name} {v.version}, key {v.key_id} ({v.key_owner})")
                if (self.versions / v.version).exists():
                    raise ModelStoreError(
                        f"version {v.version} is already installed (`sonoguide model list`)"
                    )
                if version_key(v.version) < version_key(active_version) and not allow_downgrade:
                    raise ModelStoreError(
                        f"version {v.version} is older than the active {active_version}: refused "
                        "(a downgrade must be asked for explicitly: --allow-downgrade)"
                    )

            tmp = self.root / f"{INCOMING}{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                say("verifying and extracting")
                verified = unpack(bundle, tmp, trust, now, check, self.max_total)
                info = self._check_model(tmp, verified)
                say("running the golden vectors")
                runner, where = golden(tmp / "model")
                report = check_golden(_read_json(tmp / "golden.json"), runner, where)
                for p in [tmp / "model", tmp]:
                    fsync_dir(p)
                self.versions.mkdir(exist_ok=True)  # only now: a refused install leaves the store as it was
                os.rename(tmp, self.versions / verified.version)
                fsync_dir(self.versions)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        say(f"installed {verified.version}")
        return {"name": verified.name, "version": verified.version, "key_id": verified.key_id,
                "golden": report, **info}  # fmt: skip

    def _check_model(self, folder: Path, verified: VerifiedBundle) -> dict[str, Any]:
        model = _read_json(folder / "model" / "manifest.json")
        if (str(model.get("name")), str(model.get("version"))) != (verified.name, verified.version):
            raise ModelStoreError(
                f"incompatible model: model/manifest.json is {model.get('name')} {model.get('version')}, "
                f"the bundle says {verified.name} {verified.version}"
            )
        if model.get("name") != self.factory.name:
            raise ModelStoreError(
                f"incompatible model: {model.get('name')!r} is not a {self.factory.name} model"
            )
        problems = contract_problems(model, self.service_version, self.known_presets)
        if problems:
            raise ModelStoreError("incompatible model: " + "; ".join(problems))
        return {"min_service_version": model.get("min_service_version")}

    # --- pointer operations ---------------------------------------------------------------------------

    def activate(
        self, version: str, trust: Trust, allow_downgrade: bool = False, trial: bool = False
    ) -> StoreState:
        """Make ``version`` (or "factory") active; the active one becomes the previous."""
        with self.locked():
            state = self.read_state()
            target = self._pointer(version)
            if target == state.active:
                if state.trial != trial:
                    state.trial = trial
                    self._write_state(state)
                return state
            if target is not None:
                verify_folder(self.versions / target, trust)
            if (
                version_key(self.version_of(target)) < version_key(self.version_of(state.active))
                and not allow_downgrade
            ):
                raise ModelStoreError(
                    f"version {self.version_of(target)} is older than the active {self.version_of(state.active)}: "
                    "refused (use rollback, or ask for the downgrade explicitly: --allow-downgrade)"
                )
            new = StoreState(target, state.active, trial)
            self._write_state(new)
            return new

    def commit(self) -> StoreState:
        """The active version passed its probation."""
        with self.locked():
            state = self.read_state()
            if state.trial:
                state.trial = False
                self._write_state(state)
            return state

    def rollback(self, trust: Trust) -> StoreState:
        """Back to the previous version (the factory model when there is none)."""
        with self.locked():
            state = self.read_state()
            target = state.previous
            if target == state.active:
                raise ModelStoreError("nothing to roll back to: no previous version")
            if target is not None and not (self.versions / target).is_dir():
                target = None  # the previous was removed: the factory model is always there
            if target is not None:
                verify_folder(self.versions / target, trust)
            new = StoreState(target, state.active, False)
            self._write_state(new)
            return new

    def remove(self, version: str) -> None:
        with self.locked():
            state = self.read_state()
            target = self._pointer(version)
            if target is None:
                raise ModelStoreError("the factory model cannot be removed")
            if target == state.active:
                raise ModelStoreError(f"version {version} is active; activate another one first")
            folder = self.versions / target
            if not folder.is_dir():
                raise ModelStoreError(f"version {version} is not installed")
            # Out of versions/ first (atomic), then deleted: a crash leaves garbage, never half a version.
            doomed = self.root / f"{INCOMING}removed-{secrets.token_hex(4)}"
            os.rename(folder, doomed)
            fsync_dir(self.versions)
            if state.previous == target:
                state.previous = None
                self._write_state(state)
            shutil.rmtree(doomed, ignore_errors=True)

    def _pointer(self, version: str) -> str | None:
        if version in (FACTORY, "") or (
            version == self.factory.version and not (self.versions / version).is_dir()
        ):
            return None
        if not VERSION.match(version) or not (self.versions / version).is_dir():
            raise ModelStoreError(f"version {version!r} is not installed (`sonoguide model list`)")
        return version

    # --- reading ---------------------------------------------------------------------------------------

    def resolve_active(self, trust: Trust) -> tuple[StoreState, Path, list[str]]:
        """What the daemon serves at start: the active version if it verifies, else the previous,
        else the factory model; a version found on trial is rolled back. (state, model folder, notes)."""
        notes: list[str] = []
        try:
            with self.locked():
                state = self.read_state()
                if state.trial:
                    notes.append(
                        f"version {self.version_of(state.active)} was on probation when the service stopped: rolled back"
                    )
                    state = StoreState(state.previous, state.active, False)
                    self._write_state(state)
        except StoreBusyError:
            state = self.read_state()  # an install runs beside us; it does not move the pointer
        for pointer in (state.active, state.previous):
            if pointer is None:
                break
            try:
                verify_folder(self.versions / pointer, trust)
                return state, self.model_dir(pointer), notes
            except ModelStoreError as exc:
                notes.append(f"version {pointer} cannot be served: {exc}")
        return state, self.factory.folder, notes

    def entries(self, trust: Trust | None) -> list[Entry]:
        state = self.read_state()
        out = [
            Entry(
                self.factory.version,
                FACTORY,
                active=state.active is None,
                previous=state.previous is None and state.active is not None,
            )
        ]
        if self.versions.is_dir():
            for folder in sorted(self.versions.iterdir(), key=lambda p: version_key(p.name)):
                e = Entry(
                    folder.name,
                    "store",
                    active=state.active == folder.name,
                    previous=state.previous == folder.name,
                )
                if trust is not None:
                    try:
                        v = verify_folder(folder, trust)
                        e.key_id = v.key_id
                        e.info = {"signed_at": v.manifest["signature"]["signed_at"]}
                    except ModelStoreError as exc:
                        e.ok, e.problem = False, str(exc)
                out.append(e)
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"{path.name} is unreadable: {exc}") from None
    if not isinstance(d, dict):
        raise ModelStoreError(f"{path.name} is not a JSON object")
    return d
