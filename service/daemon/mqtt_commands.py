"""The daemon's answers to ``cmd/<name>`` requests (already parsed and schema-checked by the MQTT side).

Each handler returns the ``result`` object of the response or raises :class:`CommandError` with a
message for the requester. Nothing here touches pipeline threads directly: settings go through the
probe state's methods (``pipeline.state``) and the probe link, which reads every value back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from service import __version__
from service.daemon.capture_exam import ExamError
from service.daemon.captures import CaptureService
from service.daemon.model_updates import ModelUpdates, UpdateError
from service.daemon.pipeline import Pipeline
from service.daemon.probe import DEPTH, FREQUENCY, GAIN
from service.daemon.probe_state import AUTO_PARAM
from service.mqtt.client import CommandError
from service.policy.autotune import ProbeLimits

log = logging.getLogger(__name__)

# The display's `cmd/preset` table: the starting settings a clinician picks for an exam (depth, gain
# and frequency snap to the probe's own steps). Not the simulator's exam presets (sim.presets.PRESETS:
# phantom, probe geometry, physics), which the daemon must not import; a test checks that every
# simulated exam has a row here whose values its simulated probe offers.
PRESET_SETTINGS: dict[str, dict[str, float]] = {
    "abdomen": {GAIN: 50.0, DEPTH: 160.0, FREQUENCY: 3.5},
    "cardiac": {GAIN: 55.0, DEPTH: 150.0, FREQUENCY: 2.5},
    "lung": {GAIN: 45.0, DEPTH: 120.0, FREQUENCY: 3.5},
    "vascular": {GAIN: 45.0, DEPTH: 40.0, FREQUENCY: 7.5},
}

Calibrator = Callable[[], dict[str, Any]]
# worklist query -> (items as exam fields, truncated); service.daemon.worklist.WorklistClient.find
WorklistFinder = Callable[[dict[str, Any]], tuple[list[dict[str, str]], bool]]


def step_value(limits: ProbeLimits, param: str, current: float, steps: int) -> float:
    """``current`` moved by ``steps`` of the probe's own steps; CommandError beyond its range."""
    if param == GAIN:
        value = limits.quantize_gain(current) + steps * limits.gain_step_db
        if not limits.gain_min_db <= value <= limits.gain_max_db:
            end = "maximum" if steps > 0 else "minimum"
            bound = limits.gain_max_db if steps > 0 else limits.gain_min_db
            raise CommandError(
                f"gain_db {current:g} cannot go {steps:+d} step(s) of {limits.gain_step_db:g} dB: "
                f"the probe's {end} is {bound:g} dB"
            )
        return float(value)
    choices = list(limits.depth_steps_mm if param == DEPTH else limits.freqs_mhz)
    nearest = min(range(len(choices)), key=lambda i: (abs(choices[i] - current), choices[i]))
    index = nearest + steps
    if not 0 <= index < len(choices):
        end = "last" if steps > 0 else "first"
        raise CommandError(
            f"{param} {current:g} cannot go {steps:+d} step(s): {choices[-1 if steps > 0 else 0]:g} is the probe's {end} of {choices}"
        )
    return float(choices[index])


class CommandHandler:
    def __init__(
        self,
        pipeline: Pipeline,
        model_updates: ModelUpdates | None = None,
        calibrator: Calibrator | None = None,
        started_at: float | None = None,
        progress: Callable[[str], None] | None = None,
        captures: CaptureService | None = None,
        worklist: WorklistFinder | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.model_updates = model_updates
        self.captures, self.worklist = captures, worklist
        self.calibrator = calibrator
        self.progress = progress or (lambda _m: None)  # a step of a long command, to its requester
        self.started_at = time.monotonic() if started_at is None else started_at

    def __call__(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            raise CommandError(f"command '{name}' is not implemented")
        result: dict[str, Any] = handler(request)
        return result

    def cmd_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    def cmd_set_auto(self, request: dict[str, Any]) -> dict[str, Any]:
        self.pipeline.state.set_auto(request["param"], bool(request["enabled"]))
        return {"param": request["param"], "enabled": bool(request["enabled"])}

    def cmd_set_param(self, request: dict[str, Any]) -> dict[str, Any]:
        param, value = request["param"], float(request["value"])
        limits = self.pipeline.limits
        if param == GAIN and not limits.gain_min_db <= value <= limits.gain_max_db:
            raise CommandError(
                f"gain_db {value:g} is outside the probe's range {limits.gain_min_db:g}..{limits.gain_max_db:g} dB"
            )
        if param == DEPTH and value not in limits.depth_steps_mm:
            raise CommandError(
                f"depth_mm {value:g} is not one of the probe's depth steps {list(limits.depth_steps_mm)}"
            )
        if param == FREQUENCY and value not in limits.freqs_mhz:
            raise CommandError(
                f"freq_mhz {value:g} is not one of the probe's frequencies {list(limits.freqs_mhz)}"
            )
        try:
            readback = self.pipeline.set_manual(param, value)
        except Exception as e:
            raise CommandError(str(e)) from None
        paused = self.pipeline.state.pause_s if param in AUTO_PARAM.values() else 0.0
        return {"param": param, "value": readback, "auto_paused_s": paused}

    def cmd_step_param(self, request: dict[str, Any]) -> dict[str, Any]:
        param, steps = request["param"], int(request["steps"])
        current = self.pipeline.state.setting(param)
        if current is None:
            raise CommandError(f"{param} is not known yet (no settings read from the probe)")
        if steps == 0:
            return {"param": param, "value": current, "auto_paused_s": 0.0}
        value = step_value(self.pipeline.limits, param, float(current), steps)
        return self.cmd_set_param({"param": param, "value": value})

    def cmd_preset(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["name"]
        if name not in PRESET_SETTINGS:
            raise CommandError(f"unknown preset '{name}'; known: {', '.join(sorted(PRESET_SETTINGS))}")
        applied: dict[str, float] = {}
        for param, value in PRESET_SETTINGS[name].items():
            # Presets name typical values; the probe at hand offers its own steps.
            if param == DEPTH:
                value = self.pipeline.limits.nearest_depth(value)
            elif param == GAIN:
                value = self.pipeline.limits.quantize_gain(value)
            elif param == FREQUENCY:
                value = self.pipeline.limits.nearest_freq(value)
            try:
                applied[param] = self.pipeline.set_manual(param, value)
            except Exception as e:
                raise CommandError(
                    f"preset '{name}' stopped at {param}: {e}; applied so far: {applied}"
                ) from None
        self.pipeline.set_preset(name)  # another exam: the target belief starts from its prior
        return {"name": name, "settings": applied}

    def cmd_freeze(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            frozen = self.pipeline.set_frozen(bool(request["frozen"]), source="command")
        except Exception as e:
            raise CommandError(f"the probe did not accept frozen = {request['frozen']}: {e}") from None
        return {"frozen": frozen}

    def cmd_capture(self, request: dict[str, Any]) -> dict[str, Any]:
        frame_id = self.pipeline.capture_latest("manual", "on request from the display")
        if frame_id is None:
            frame_id = self.pipeline.last_frame_id
        self.pipeline.state.event(
            "capture",
            f"capture of frame {frame_id} on request",
            source="command",
            **({"frame_id": frame_id} if frame_id is not None else {}),
        )
        return {"frame_id": frame_id}

    def cmd_exam_start(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.captures is None:
            raise CommandError("this daemon keeps no captures ([captures]): there is no exam to open")
        try:
            exam = self.captures.exams.start(request)
        except ExamError as e:
            raise CommandError(f"exam not opened: {e}") from None
        self.pipeline.state.event("exam", "exam opened", source="command")
        return {"study_instance_uid": exam.study_uid, "patient_id": exam.patient.id, "unassigned": False}

    def cmd_exam_end(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.captures is None:
            raise CommandError("this daemon keeps no captures ([captures]): there is no exam to close")
        ended = self.captures.exams.end()
        if ended is not None:
            self.pipeline.state.event(
                "exam", "exam closed; captures now go to the unassigned study", source="command"
            )
        exam = ended or self.captures.exams.current()
        return {
            "study_instance_uid": exam.study_uid,
            "patient_id": exam.patient.id,
            "unassigned": ended is None,
        }

    def cmd_worklist(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.worklist is None:
            raise CommandError("no worklist configured ([worklist] host): enter the patient by hand")
        try:
            items, truncated = self.worklist(request)
        except Exception as e:
            raise CommandError(f"worklist query failed: {e}") from None
        return {"items": items, "truncated": truncated}

    def cmd_calibrate_camera(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.calibrator is None:
            raise CommandError('no camera configured ([camera] source = "none"): nothing to calibrate')
        try:
            result = self.calibrator()
            self.pipeline.set_preset(None, reason="new camera calibration")  # old poses: another frame
            return result
        except Exception as e:
            raise CommandError(f"calibration failed: {e}") from None

    # --- model updates (service.daemon.model_updates; docs/model-updates.md) -------------------------

    def _updates(self) -> ModelUpdates:
        if self.model_updates is None:
            raise CommandError("no model store is configured here; model updates are not available")
        return self.model_updates

    def cmd_install_model(self, request: dict[str, Any]) -> dict[str, Any]:
        updates = self._updates()
        try:
            result = updates.install(request["path"], bool(request.get("allow_downgrade")), self.progress)
            result["state"] = "installed"
            if request.get("activate"):
                activation = updates.activate(
                    result["version"],
                    bool(request.get("force")),
                    bool(request.get("allow_downgrade")),
                    self.progress,
                )
                result.update(activation)
        except UpdateError as e:
            raise CommandError(str(e)) from None
        return result

    def cmd_activate_model(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._updates().activate(
                request["version"],
                bool(request.get("force")),
                bool(request.get("allow_downgrade")),
                self.progress,
            )
        except UpdateError as e:
            raise CommandError(str(e)) from None

    def cmd_rollback_model(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._updates().rollback(request.get("reason") or "asked by the technician")
        except UpdateError as e:
            raise CommandError(str(e)) from None
