"""The daemon wired together: model, pipeline, MQTT API, commands, health. No hardware knowledge here.

``Daemon`` takes an already-open probe link and a model, so the run command, the demo and the tests
build it the same way with different links (real serial, the emulator on a pty, a test frame source).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from firmware_bridge.devicelog import device_logger
from firmware_bridge.portnames import STABLE_NAME, missing_port_reason, renumbered_name
from service import __version__
from service.daemon.captures import CaptureService
from service.daemon.clock import Clock, MonotonicClock
from service.daemon.config import Config
from service.daemon.health import HealthMonitor, SdNotifier
from service.daemon.model_updates import FolderLoader, ModelUpdates
from service.daemon.mqtt_commands import Calibrator, CommandHandler, WorklistFinder
from service.daemon.pipeline import Pipeline
from service.daemon.probe import describe_info
from service.model_store.store import ModelStore
from service.mqtt.client import MqttApi
from service.policy.guidance import GuidanceParams
from service.seams import Model, PoseSource, ProbeLinkLike

# A loop that has not turned for this long is hung (each turns at least every 0.2 s, or once per serial
# round trip with its retries); below WatchdogSec/2 (systemd/sonoguide.service) so systemd acts on it.
LOOP_STALL_S = 5.0


class Daemon:
    def __init__(
        self,
        config: Config,
        link: ProbeLinkLike,
        model: Model,
        clock: Clock | None = None,
        camera: PoseSource | None = None,
        model_loader: FolderLoader | None = None,
        model_store: ModelStore | None = None,
        store_notes: list[str] | None = None,
        calibrator: Calibrator | None = None,
        notifier: SdNotifier | None = None,
        status_period_s: float = 2.0,
        mqtt_reconnect_delay_s: tuple[float, float] = (0.5, 10.0),
        captures: CaptureService | None = None,
        worklist: WorklistFinder | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.link = link
        self.model = model
        self.camera = camera
        self.log = device_logger(__name__, f"device:{config.device.id}")
        self.started_at = self.clock.now()
        self.status_period_s = status_period_s
        self.mqtt = MqttApi(config.device.id, config.mqtt, reconnect_delay_s=mqtt_reconnect_delay_s)
        guidance = GuidanceParams(
            good_quality=config.guidance.good_quality, capture_after_s=config.guidance.capture_after_s
        )
        self.pipeline = Pipeline(link, model, self.mqtt, self.clock, config.auto, guidance, camera=camera)
        # Model updates need the store (state dir) and a loader on this device's execution providers.
        self.model_updates = (
            ModelUpdates(self.pipeline, model_store, Path(config.model.keys), config.model, model_loader)
            if model_store is not None and model_loader is not None
            else None
        )
        self.store_notes = list(store_notes or [])
        # Captures: the pipeline hands frames to the store (never waits); events go out as the rest do.
        self.captures = captures
        if captures is not None:
            captures.event = self.pipeline.state.event
            self.pipeline.capture_sink = captures.submit
        self.mqtt.command_handler = CommandHandler(
            self.pipeline,
            self.model_updates,
            calibrator,
            progress=self.mqtt.progress,
            captures=captures,
            worklist=worklist,
        )
        self.health = HealthMonitor(notifier or SdNotifier())
        self.model_warm = False
        self._stop = threading.Event()
        self._stopped = False
        self._health_thread: threading.Thread | None = None
        self._stall_logged = False

    def start(self) -> Daemon:
        self.log.info("warming up model %s %s (%s)", self.model.name, self.model.version, self.model.provider)
        self.model.warmup()
        self.model_warm = True
        self._read_frozen()
        if self.captures is not None:
            self.captures.start()
        self.mqtt.start()
        self.pipeline.state.publish_settings()
        self.publish_status()
        self.pipeline.start()
        if self.model_updates is not None:
            self.model_updates.start(self.store_notes)
        self._health_thread = threading.Thread(target=self._health_loop, name="health", daemon=True)
        self._health_thread.start()
        return self

    def _read_frozen(self) -> None:
        """A probe frozen before we started (e.g. across a restart) sends no frames: say so, not 'no frames'."""
        if not getattr(self.link, "connected", True):
            return  # absent: read when it connects (a frozen probe then reports it with its events)
        try:
            if self.link.get_param("frozen"):
                self.pipeline.state.set_frozen(True, "probe", "the probe is frozen (found at start)")
        except Exception as e:  # an absent or silent probe is reported by status, not fatal here
            self.log.warning("could not read the probe's frozen state: %s", e)

    def stop(self) -> None:
        """Clean exit (idempotent): pipeline down, last status, retained ``stopped``, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.health.stopping()
        if self.model_updates is not None:
            self.model_updates.stop()
        self.pipeline.stop()
        if self.captures is not None:
            self.captures.stop()  # what was captured is written; unsent files wait in the outbox
        if self._health_thread is not None:
            self._health_thread.join(3)
        self.publish_status(health="degraded", summary="stopped")
        self.mqtt.stop()
        self.log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def request_stop(self) -> None:
        self._stop.set()

    # --- status -----------------------------------------------------------------------------------

    def status_message(self, health: str | None = None, summary: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        flowing = self.health.frames_flowing(self.pipeline.last_frame_time, now)
        frozen = self.pipeline.state.frozen
        absent = not getattr(self.link, "connected", True)
        probe_state = "ok" if flowing else ("absent" if absent else "frozen" if frozen else "no_frames")
        camera_state = "none" if self.camera is None else self.camera.state
        if health is None:
            health = (
                "starting"
                if self.pipeline.last_frame_time is None and now - self.started_at < 10
                else ("ok" if flowing or frozen else "degraded")
            )
        model = self.pipeline.model
        fps = round(self.pipeline.fps, 1) if flowing else 0.0
        port = str(getattr(self.link, "url", self.config.probe.port))  # what the link opens
        port_detail = missing_port_reason(port) if absent else ""
        if absent and not port_detail and renumbered_name(port):
            port_detail = (
                f"no probe answers on {port}, a name handed out afresh on each replug: another device "
                f"may hold it now; use a stable link path ({STABLE_NAME}, or the emulator's --link)"
            )
        if summary is None and absent:
            summary = (
                f"waiting for the probe: {port_detail}" if port_detail else f"waiting for the probe on {port}"
            )
        if summary is None:
            summary = (
                f"probe {probe_state}, {fps:g} fps, camera {camera_state}"
                + ("" if camera_state == "tracking" else " (guidance from the image alone)")
                + f", model {model.name} {model.version} on {model.provider}"
            )
        gpu_warning = str(getattr(model, "gpu_warning", ""))
        if gpu_warning:
            summary = f"WARNING: GPU present, model on the CPU; {summary}"
        return {
            "probe": {
                "state": probe_state,
                "port": port,
                "info": describe_info(getattr(self.link, "info", None)),
                **({"detail": port_detail} if port_detail else {}),
            },
            "camera": {"state": camera_state, "source": self.config.camera.source},
            "guidance": {"basis": self.pipeline.guidance_source},
            "model": {
                "name": model.name,
                "version": model.version,
                "provider": model.provider,
                **({"gpu_warning": gpu_warning} if gpu_warning else {}),
                **(self.model_updates.status() if self.model_updates is not None else {}),
            },
            "fps": fps,
            "health": health,
            "summary": summary,
            "dropped": self.pipeline.dropped(),
            "captures": self.captures.status() if self.captures is not None else {"enabled": False},
            "mqtt": self.mqtt.losses(),
            "uptime_s": round(max(0.0, now - self.started_at), 1),
            "version": __version__,
        }

    def publish_status(self, health: str | None = None, summary: str | None = None) -> dict[str, Any]:
        message = self.status_message(health, summary)
        self.mqtt.publish_retained("status", message)
        return message

    def _health_loop(self) -> None:
        last_status = -1e18
        while not self._stop.wait(0.25):
            try:
                now = self.clock.now()
                message = self.status_message() if now - last_status >= self.status_period_s else None
                if message is not None:
                    last_status = now
                    self.mqtt.publish_retained("status", message)
                    self.pipeline.state.publish_settings()  # the pause countdown moves
                summary = message["summary"] if message else self.health._last_status
                stalled = self.pipeline.stalled_loops(LOOP_STALL_S)
                if not self.mqtt.worker_alive:
                    stalled.append("mqtt-commands")
                if stalled and not self._stall_logged:
                    self.log.error("loops not turning: %s; the watchdog is no longer fed", ", ".join(stalled))
                self._stall_logged = bool(stalled)
                sent = self.health.tick(now, self.model_warm, not stalled, summary)
                if "READY=1" in sent:
                    self.log.info("ready: model warm, loops running")
            except Exception:
                self.log.exception("health check failed")
