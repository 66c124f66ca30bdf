"""Model updates in the running daemon: install, activate (hot swap between two frames), probation,
rollback. The store and the bundle checks are :mod:`service.model_store`; this is the live part.

Activation loads the new version beside the serving one, runs its golden vectors on the execution
provider it got, warms it up, then waits for a safe moment (image frozen, or no skin contact for
``[model] safe_after_s``) unless forced, and swaps the pipeline's model reference between two frames
(``Pipeline.swap_model``): the frame in flight finishes on the old model, the next runs on the new
one, none goes without guidance. During ``probation_s`` a :class:`ProbationModel` serves the new
version and watches it: an inference error or a non-finite output answers that frame with the old
model (still loaded) and rolls back; so do three inferences slower than ``probation_max_latency_ms``.
The store's pointer carries ``trial`` until the probation passes, so a daemon killed during it
comes back on the old version. Every step is an ``events`` message of kind ``model``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.devicelog import device_logger
from service.daemon.config import ModelConfig
from service.daemon.pipeline import Pipeline
from service.model_store import ModelStoreError
from service.model_store.bundle import verify_folder
from service.model_store.compat import version_key
from service.model_store.golden import check_golden
from service.model_store.keys import Trust, format_time, utc_now
from service.model_store.store import ModelStore, StoreState
from service.seams import Model, ModelOutput

FolderLoader = Callable[[Path], Model]  # a model folder -> a loaded, warmed-up model on the configured EPs
Progress = Callable[[str], None]
SLOW_FRAMES_TO_FAIL = 3


class UpdateError(Exception):
    """Refused or failed; the serving model is unchanged. The message says why."""


def _finite(out: ModelOutput) -> bool:
    values = [out.gain_error_db, out.best_depth_mm, out.target_visible, out.quality, out.contact,
              *out.correction_mm, *out.correction_deg]  # fmt: skip
    return all(math.isfinite(v) for v in values)


class ProbationModel:
    """Serves ``new`` while watching it; any frame ``new`` cannot answer is answered by ``old``."""

    def __init__(self, new: Model, old: Model, max_latency_ms: float, fail: Callable[[str], None]) -> None:
        self.new, self.old, self.max_latency_ms, self._fail = new, old, max_latency_ms, fail
        self.name, self.version, self.provider = new.name, new.version, new.provider
        self.gpu_warning = getattr(new, "gpu_warning", "")
        self.manifest = getattr(new, "manifest", None)
        self.frames = self.slow = 0
        self.failed = False

    def warmup(self) -> None:
        self.new.warmup()

    def predict(self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float) -> ModelOutput:
        if self.failed:
            return self.old.predict(image, gain_db, depth_mm, freq_mhz)
        t0 = time.perf_counter()
        try:
            out = self.new.predict(image, gain_db, depth_mm, freq_mhz)
        except Exception as exc:
            return self._fallback(
                f"inference error: {type(exc).__name__}: {exc}", image, gain_db, depth_mm, freq_mhz
            )
        if not _finite(out):
            return self._fallback("non-finite output", image, gain_db, depth_mm, freq_mhz)
        self.frames += 1
        ms = 1000 * (time.perf_counter() - t0)
        if ms > self.max_latency_ms:
            self.slow += 1
            if self.slow >= SLOW_FRAMES_TO_FAIL:
                self.failed = True
                self._fail(
                    f"{self.slow} inferences slower than {self.max_latency_ms:g} ms (last {ms:.1f} ms)"
                )
        return out

    def _fallback(
        self, why: str, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float
    ) -> ModelOutput:
        self.failed = True
        self._fail(why)
        return self.old.predict(image, gain_db, depth_mm, freq_mhz)


@dataclass
class Pending:
    pointer: str | None  # the store's name for it (None: the factory model)
    version: str
    model: Model
    key_id: str
    since: float


class ModelUpdates:
    """The daemon's model versions: what serves, what waits for a safe moment, what is on probation."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: ModelStore,
        keys_dir: Path,
        config: ModelConfig,
        load: FolderLoader,
    ) -> None:
        self.pipeline, self.store, self.keys_dir, self.config, self.load = (
            pipeline,
            store,
            keys_dir,
            config,
            load,
        )
        self.log = device_logger(__name__, "model-updates")
        self._lock = threading.RLock()  # one change at a time: commands, the watcher's swap and rollback
        self.pending: Pending | None = None
        self.probation: ProbationModel | None = None
        self.probation_version = ""
        self.probation_until = 0.0
        self.last_probation: dict[str, Any] = {"state": "none"}
        self._failure: str | None = None
        self._last_contact = time.monotonic()
        self.swaps: list[dict[str, Any]] = []  # measured swaps, for status and the docs' figures
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        previous_hook = pipeline.on_guided

        def on_guided(message: dict[str, Any]) -> None:
            if message.get("contact", 0.0) >= 0.5:
                self._last_contact = time.monotonic()
            if previous_hook is not None:
                previous_hook(message)

        pipeline.on_guided = on_guided

    # --- life -----------------------------------------------------------------------------------------

    def start(self, notes: Sequence[str] = ()) -> None:
        for note in notes:  # what the start found (a version on trial rolled back, a damaged version)
            self.event("warning", "start", note, reason=note)
        self._thread = threading.Thread(target=self._watch, name="model-updates", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(3)

    def trust(self) -> Trust:
        try:
            return Trust.load(self.keys_dir)
        except ModelStoreError as exc:
            raise UpdateError(f"trusted keys: {exc}") from None

    # --- events and status ----------------------------------------------------------------------------

    def event(self, kind: str, step: str, message: str, **fields: Any) -> None:
        self.log.info("%s: %s", step, message)
        self.pipeline.state.event(kind, message, step=step, at=format_time(utc_now()), **fields)

    def status(self) -> dict[str, Any]:
        """For the status topic. Takes no lock: a loading version (minutes for a TensorRT engine) must
        not hold up the health loop; each attribute read is atomic."""
        try:
            state = self.store.read_state()
        except ModelStoreError as exc:  # status must still go out; doctor says more
            self.log.warning("model store: %s", exc)
            state = StoreState()
        pending, probation = self.pending, self.probation
        out: dict[str, Any] = {
            "pending": pending.version if pending else None,
            "previous": self.store.version_of(state.previous)
            if state.active is not None or state.previous
            else None,
        }
        if probation is not None:
            left = max(0.0, self.probation_until - time.monotonic())
            out["probation"] = {
                "state": "watching",
                "version": self.probation_version,
                "remaining_s": round(left, 1),
            }
        else:
            out["probation"] = dict(self.last_probation)
        return out

    # --- commands (the MQTT worker thread) ------------------------------------------------------------

    def install(self, path: str, allow_downgrade: bool, progress: Progress) -> dict[str, Any]:
        bundle = Path(path)
        self.event("model", "install_started", f"installing {bundle.name}", reason=f"bundle {bundle}")

        def golden_loader(folder: Path) -> tuple[Any, str]:
            model = self.load(folder)  # on this daemon's execution providers
            return _runner(model), model.provider

        try:
            result = self.store.install(bundle, self.trust(), golden_loader, allow_downgrade, progress)
        except (ModelStoreError, UpdateError) as exc:
            self.event(
                "warning", "install_refused", f"install of {bundle.name} refused: {exc}", reason=str(exc)
            )
            raise UpdateError(f"{exc}; the serving model is unchanged") from None
        self.event("model", "installed", f"installed {result['version']} signed by key {result['key_id']}",
                   model_version=result["version"], key_id=result["key_id"])  # fmt: skip
        return result

    def activate(
        self, version: str, force: bool, allow_downgrade: bool, progress: Progress
    ) -> dict[str, Any]:
        with self._lock:
            if self.probation is not None and not force:
                raise UpdateError(
                    f"version {self.probation_version} is still on probation; wait, roll back, or force"
                )
            trust = self.trust()
            try:
                pointer = self.store._pointer(version)
                folder = self.store.model_dir(pointer)
                key_id = verify_folder(folder.parent, trust).key_id if pointer is not None else ""
                current = self.store.read_state().active
                target_v, current_v = self.store.version_of(pointer), self.store.version_of(current)
                if version_key(target_v) < version_key(current_v) and not allow_downgrade:
                    raise ModelStoreError(
                        f"version {target_v} is older than the active {current_v}: refused (use rollback_model, "
                        "or allow_downgrade)"
                    )
                if pointer == current and self.probation is None:
                    return {"state": "active", "version": target_v, "swapped": False}
                progress(f"loading {target_v} beside {self.pipeline.model.version}")
                model = self.load(folder)
                if pointer is not None:
                    progress(f"golden vectors on {model.provider}")
                    golden = json.loads((folder.parent / "golden.json").read_text())
                    report = check_golden(golden, _runner(model), model.provider)
                    self.event("model", "golden_passed", f"{target_v}: golden vectors within tolerance on {model.provider}",
                               model_version=target_v, key_id=key_id, reason=json.dumps(report["worst"]))  # fmt: skip
            except (ModelStoreError, OSError, ValueError) as exc:
                self.event("warning", "activation_refused", f"activation of {version} refused: {exc}",
                           model_version=version, reason=str(exc))  # fmt: skip
                raise UpdateError(f"{exc}; the serving model is unchanged") from None
            except Exception as exc:  # the model does not load on this device
                self.event("warning", "activation_refused", f"{version} does not load: {exc}",
                           model_version=version, reason=str(exc))  # fmt: skip
                raise UpdateError(
                    f"version {version} does not load here: {exc}; the serving model is unchanged"
                ) from None
            progress(f"{target_v} warmed up on {model.provider}")
            self.pending = Pending(pointer, target_v, model, key_id, time.monotonic())
            safe, why = self._safe_moment()
            if force or safe:
                return self._swap(self.pending, "forced by the technician" if force and not safe else why)
            self.event("model", "pending", f"{target_v} ready; activation waits for a safe moment ({why})",
                       model_version=target_v, key_id=key_id, reason=why)  # fmt: skip
            self._wake.set()
            return {"state": "pending", "version": target_v, "waiting_for": why, "swapped": False}

    def rollback(self, reason: str, source: str = "command") -> dict[str, Any]:
        with self._lock:
            self.pending = None
            prob = self.probation
            trust = self.trust()
            try:
                before = self.store.read_state()
                state = self.store.rollback(trust)
            except ModelStoreError as exc:
                raise UpdateError(str(exc)) from None
            target_v = self.store.version_of(state.active)
            if prob is not None and prob.old.version == target_v:
                model = prob.old  # still loaded: the rollback is instant
            else:
                try:
                    model = self.load(self.store.model_dir(state.active))
                except Exception as exc:
                    self.store.activate(self.store.version_of(before.active) if before.active else "factory",
                                        trust, allow_downgrade=True, trial=before.trial)  # fmt: skip
                    raise UpdateError(f"version {target_v} does not load: {exc}; nothing changed") from None
            from_v = self.pipeline.model.version
            if prob is not None:
                self.last_probation = {"state": "failed" if source == "probation" else "cancelled",
                                       "version": self.probation_version, "reason": reason}  # fmt: skip
            self.probation = None
            t0 = time.perf_counter()
            self.pipeline.swap_model(model)
            swap_ms = 1000 * (time.perf_counter() - t0)
            self.swaps.append({"version": target_v, "swap_ms": swap_ms, "rollback": True})
            self.event("warning" if source == "probation" else "model", "rolled_back",
                       f"rolled back from {from_v} to {target_v}: {reason}", model_version=target_v,
                       reason=reason, source="auto" if source == "probation" else "command")  # fmt: skip
            return {
                "state": "active",
                "version": target_v,
                "from": from_v,
                "swapped": True,
                "swap_ms": round(swap_ms, 3),
            }

    # --- the swap and the watcher ---------------------------------------------------------------------

    def _safe_moment(self) -> tuple[bool, str]:
        wait = self.config.safe_after_s
        if self.pipeline.state.frozen:
            return True, "image frozen"
        off = time.monotonic() - self._last_contact
        if off >= wait:
            return True, f"no skin contact for {off:.1f} s"
        return False, f"no skin contact for {wait:g} s, or the image frozen"

    def _swap(self, pending: Pending, why: str) -> dict[str, Any]:
        with self._lock:
            trust = self.trust()
            old = self.pipeline.model
            old = old.old if isinstance(old, ProbationModel) else old
            watching = self.config.probation_s > 0
            try:
                self.store.activate(pending.pointer or "factory", trust, allow_downgrade=True, trial=watching)
            except ModelStoreError as exc:
                self.pending = None
                raise UpdateError(f"{exc}; the serving model is unchanged") from None
            serving: Model = pending.model
            if watching:
                self.probation = ProbationModel(
                    pending.model, old, self.config.probation_max_latency_ms, self._probation_failed
                )
                self.probation_version, self.probation_until = (
                    pending.version,
                    time.monotonic() + self.config.probation_s,
                )
                serving = self.probation
            frame_before = self.pipeline.last_frame_id
            t0 = time.perf_counter()
            self.pipeline.swap_model(serving)
            swap_ms = 1000 * (time.perf_counter() - t0)
            self.pending = None
            self.swaps.append({"version": pending.version, "swap_ms": swap_ms, "after_frame": frame_before})
            self.event("model", "activated",
                       f"{old.version} -> {pending.version} after frame {frame_before} ({why}); "
                       + (f"probation {self.config.probation_s:g} s" if watching else "no probation"),
                       model_version=pending.version, key_id=pending.key_id or None, reason=why,
                       **({"frame_id": frame_before} if frame_before is not None else {}))  # fmt: skip
            self._wake.set()
            return {"state": "probation" if watching else "active", "version": pending.version, "from": old.version,
                    "swapped": True, "swap_ms": round(swap_ms, 3), "reason": why}  # fmt: skip

    def _probation_failed(self, why: str) -> None:
        """On the infer thread: note it; the watcher rolls back (never block a frame)."""
        self._failure = why
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            try:
                self._tick()
            except Exception:
                self.log.exception("model update watcher")

    def _tick(self) -> None:
        with self._lock:
            failure, self._failure = self._failure, None
            if failure is not None and self.probation is not None:
                version = self.probation_version
                self.log.warning("probation of %s failed: %s", version, failure)
                self.rollback(f"probation of {version} failed: {failure}", source="probation")
                return
            if self.probation is not None and time.monotonic() >= self.probation_until:
                prob, version = self.probation, self.probation_version
                self.store.commit()
                self.probation = None
                self.pipeline.swap_model(prob.new)  # the watcher steps aside
                self.last_probation = {"state": "passed", "version": version, "frames": prob.frames}
                self.event("model", "probation_passed", f"{version} passed its probation ({prob.frames} frames)",
                           model_version=version)  # fmt: skip
                return
            if self.pending is not None:
                safe, why = self._safe_moment()
                if safe:
                    self._swap(self.pending, why)


def _runner(model: Model) -> Any:
    run = getattr(model, "golden_run", None) or getattr(model, "run", None)
    if run is None:
        raise ModelStoreError(f"model {model.name} has no raw outputs to check golden vectors with")
    return run
