"""The acquisition-to-guidance pipeline.

Stages, each owning a thread, joined by latest-value-wins slots (a slow stage drops stale frames):

    acquire ─▶ preprocess ─▶ infer ─┬─▶ guide ─▶ publish (MQTT, paho's thread)
                                    └─▶ control ─▶ link.set_param (read back), events

Control runs beside guidance rather than in front of it, so a slow serial read-back never delays an
instruction. The same stage functions run synchronously in :meth:`Pipeline.step` for simulated-time
evaluation (no threads). Time comes from an injected :class:`~service.daemon.clock.Clock`.

The pipeline owns the stages and their threads; the probe's settings state (settings, manual
override, auto flags, frozen, the change detector, events) is ``self.state``, a
:class:`~service.daemon.probe_state.ProbeState`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from firmware_bridge.devicelog import device_logger
from service.daemon.clock import Clock
from service.daemon.config import AutoConfig
from service.daemon.handoff import LatestSlot
from service.daemon.link_events import handle_link_event
from service.daemon.probe import DEPTH, FREQUENCY, GAIN, limits_from_info
from service.daemon.probe_state import ProbeState
from service.policy.autotune import (
    SKIN_CONTACT,
    AutoDepth,
    AutoGain,
    Change,
    ContactGainGuard,
    ProbeLimits,
    SkinMemory,
)
from service.policy.belief import BeliefCalibration
from service.policy.camera_guidance import (
    BeliefGuide,
    BeliefGuideParams,
    BeliefStep,
    FrameOutput,
    PendingFrames,
    newest_pose,
)
from service.policy.clip_window import FrameHistory, KeptFrame
from service.policy.guidance import Correction, GuidanceEngine, GuidanceParams, model_correction
from service.policy.search import unreliable_axes
from service.seams import ClipModel, Model, ModelOutput, PoseSource, ProbeLinkLike, Publisher, TrackedPose


@dataclass
class Work:
    """One frame on its way through the stages."""

    frame: Any
    params: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    output: ModelOutput | None = None


class Pipeline:
    def __init__(
        self,
        link: ProbeLinkLike,
        model: Model,
        publisher: Publisher,
        clock: Clock,
        auto: AutoConfig | None = None,
        guidance: GuidanceParams | None = None,
        limits: ProbeLimits | None = None,
        camera: PoseSource | None = None,
        name: str = "probe",
        preset: str | None = None,
    ) -> None:
        auto = auto or AutoConfig()
        self.link, self.model, self.publisher, self.clock, self.camera = link, model, publisher, clock, camera
        self.log = device_logger(__name__, name)
        self.limits = limits or limits_from_info(getattr(link, "info", None))
        self.auto_gain = AutoGain(self.limits)
        self.contact_guard = ContactGainGuard(self.limits)
        self.skin = SkinMemory()  # with a camera: was the probe lifted since the model last saw skin?
        self.shadowed = False  # ... no contact, yet not lifted: the belief guides out of the shadow
        self.auto_depth = AutoDepth(self.limits)
        # settings, manual override, auto flags, frozen, the change detector, events
        self.state = ProbeState(publisher, clock, auto, self.log)
        if guidance is None:
            # The axes the model's manifest marks sign-unreliable (service.policy.search) are searched, not
            # followed, while the model sees the target; far from it the model is followed on every
            # axis (GuidanceParams.near_visible, docs/evaluation.md). No manifest: followed everywhere.
            guidance = GuidanceParams(unreliable_axes=unreliable_axes(getattr(model, "manifest", None)))
        self.guidance = GuidanceEngine(guidance)
        self._seq_lock = threading.Lock()
        # The target belief needs a tracked probe and a model whose manifest calibrates it; "there"
        # means the same to it as to the words (the guidance's tolerances).
        calibration = BeliefCalibration.from_manifest(getattr(model, "manifest", None))
        self.belief: BeliefGuide | None = None
        if camera is not None and calibration is not None:
            tolerances = BeliefGuideParams(
                tolerance_mm=guidance.tolerance_mm, tolerance_deg=guidance.tolerance_deg
            )
            self.belief = BeliefGuide(calibration, tolerances)
            self.belief.reset(preset)
        self.belief_step: BeliefStep | None = None  # the belief's answer for the last frame guided
        self._set_clip(model)
        self._pending = PendingFrames()  # model outputs waiting for the camera's pose of their time
        self._model_lock = threading.Lock()
        self.slots = {n: LatestSlot[Work](n) for n in ("preprocess", "infer", "guide", "control")}
        self._threads: list[threading.Thread] = []
        self.heartbeats: dict[
            str, float
        ] = {}  # loop name -> real time of its last turn (the watchdog's proof)
        self._stop = threading.Event()
        self._seq = 0
        self.frames_in = 0
        self.frames_out = 0
        self.last_frame_time: float | None = None  # clock time of the last frame fully guided
        self.last_frame_id: int | None = None
        self.fps = 0.0
        self.errors = 0
        self.on_guided: Callable[[dict[str, Any]], None] | None = None  # e.g. health bookkeeping
        # Where captured frames go (service.daemon.captures.CaptureService.submit: never blocks).
        self.capture_sink: Callable[..., bool] | None = None
        self.last_guided: Work | None = None  # the newest frame guided: what a manual capture keeps
        add_listener = getattr(link, "add_event_listener", None)
        if add_listener is not None:  # buttons on the probe and link health arrive as events
            add_listener(self.on_link_event)

    # --- stage functions (shared by threads and step) ----------------------------------------------

    def receive(self, frame: Any) -> Work:
        now = self.clock.now()
        params = dict(getattr(frame, "params", {}) or {})
        self.state.observe_frame(params, now)
        self.frames_in += 1
        times = {"received": now}
        link_time = getattr(frame, "host_time", None)  # when the link finished reassembling it
        if isinstance(link_time, (int, float)):
            times["link"] = float(link_time)
        return Work(frame, params, times)

    def preprocess(self, work: Work) -> Work:
        image = np.asarray(work.frame.image)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(
                f"frame {work.frame.frame_id}: expected uint8 (H, W), got {image.dtype} {image.shape}"
            )
        work.image = np.ascontiguousarray(image)
        work.times["preprocessed"] = self.clock.now()
        return work

    def infer(self, work: Work) -> Work:
        assert work.image is not None
        p = work.params
        with self._model_lock:
            model = self.model
        work.output = model.predict(
            work.image, float(p.get(GAIN, 0.0)), float(p.get(DEPTH, 0.0)), float(p.get(FREQUENCY, 0.0))
        )
        work.times["inferred"] = self.clock.now()
        return work

    def control(self, work: Work) -> list[Change]:
        """Auto gain and depth for this frame; applied through the link, published and logged."""
        out, now = work.output, self.clock.now()
        if out is None or self.state.frozen:
            return []
        changes = []
        current, enabled = self.state.snapshot()

        def tunable_setting(auto_flag: str, param: str, on_skin: bool = True) -> float | None:
            """The frame's setting of ``param`` when auto-tuning may act on this frame, else None.

            Only frames taken at the current setting (older ones show the image before our change),
            never while a manual change holds the parameter, never off the skin (``on_skin``).
            """
            value = work.params.get(param)
            if (
                enabled[auto_flag]
                and value is not None
                and float(value) == current[param]
                and not self.state.paused(param, now)
                and (out.contact >= SKIN_CONTACT or not on_skin)
            ):
                return float(value)
            return None

        gain_now, depth_now = tunable_setting("gain", GAIN), tunable_setting("depth", DEPTH)
        guarded_gain = tunable_setting("gain", GAIN, on_skin=False)  # the guard watches contact itself
        on_skin = self._on_skin(work.frame.host_time, out.contact)
        self.shadowed = self.skin.shadowed(out.contact, on_skin, now)
        if guarded_gain is not None:
            change = self.contact_guard.update(out.contact, guarded_gain, now, on_skin)
            if change:
                changes.append(change)
        if gain_now is not None:
            change = self.auto_gain.update(out.gain_error_db, gain_now, now)
            if change:
                changes.append(change)
        if depth_now is not None:
            target_depth = self.belief.target_depth_mm() if self.belief is not None else None
            best_depth = target_depth if target_depth is not None else out.best_depth_mm
            change = self.auto_depth.update(best_depth, depth_now, now)
            if change:
                changes.append(change)
        applied = []
        for change in changes:
            if self._apply(change, "auto", work.frame.frame_id):
                applied.append(change)
        return applied

    def _on_skin(self, taken_at: float, contact: float) -> bool:
        """Whether the camera says the probe was not lifted since the model last saw skin (no camera
        or no tracked pose: not known, False)."""
        if self.camera is None:
            return False
        pose = newest_pose(self.camera.pose_at, taken_at)
        position = pose.position_mm if pose is not None else None
        self.skin.note(contact, position, pose.patient_from_probe if pose is not None else None)
        return self.skin.on_skin(position)

    def guide(self, work: Work) -> dict[str, Any]:
        out, now = work.output, self.clock.now()
        assert out is not None
        taken_at = work.frame.host_time
        pose = newest_pose(self.camera.pose_at, taken_at) if self.camera is not None else None
        with self._model_lock:
            model = self.model
        out = work.output = self._clip(model, out, taken_at, pose)
        belief = self._belief_correction(taken_at, pose, out, now)
        shown, capture = self.guidance.update(
            model_correction(out.correction_mm, out.correction_deg, out.confidence),
            out.quality,
            out.contact,
            now,
            camera=pose.correction if pose else None,
            patient_from_probe=pose.patient_from_probe if pose else None,
            visible=out.target_visible,
            belief=belief,
            belief_good_quality=self.belief.agreeing_quality() if self.belief is not None else None,
            shadowed=self.shadowed,
        )
        work.times["guided"] = now
        with self._seq_lock:
            self._seq += 1
            seq = self._seq
        times = {"device_us": int(work.frame.device_ts_us), **{k: round(v, 6) for k, v in work.times.items()}}
        message = {
            "seq": seq,
            "frame_id": int(work.frame.frame_id),
            "instruction": shown.id,
            "text": shown.text,
            "magnitude": shown.magnitude,
            "unit": shown.unit,
            "confidence": shown.confidence,
            "quality": round(_unit(out.quality), 3),
            "target_visible": round(_unit(out.target_visible), 3),
            "contact": round(_unit(out.contact), 3),
            "basis": shown.basis,
            "frozen": self.state.frozen,
            "t": times,
        }
        if capture:
            self.state.event(
                "capture",
                f"automatic capture of frame {work.frame.frame_id}: good view held",
                frame_id=int(work.frame.frame_id),
                source="auto",
                reason=f"quality >= {self.guidance.params.good_quality} for {self.guidance.params.capture_after_s} s",
            )
            self._keep(work, "auto", "quality held")
        self.last_guided = work
        return message

    def _keep(self, work: Work, reason: str, reason_text: str) -> bool:
        """Hand the frame to the capture store (copies and queues; no disk or network here)."""
        if self.capture_sink is None:
            return False
        out = work.output
        return self.capture_sink(
            work.frame.image, int(work.frame.frame_id), work.params, reason, reason_text,
            quality=None if out is None else round(_unit(out.quality), 3), model=self.model,
        )  # fmt: skip

    def capture_latest(self, reason: str, reason_text: str) -> int | None:
        """Keep the newest guided frame (a capture on request or from the probe's button)."""
        work = self.last_guided
        if work is None:
            return None
        self._keep(work, reason, reason_text)
        return int(work.frame.frame_id)

    def _belief_correction(
        self, taken_at: float, pose: TrackedPose | None, out: ModelOutput, now: float
    ) -> Correction | None:
        """The tracked belief's correction for this frame, or None (no camera pose: the image alone).
        The frame's model output is folded in once the camera's pose at ``taken_at`` is known (it
        comes later than the probe's frame); the motion is named from the newest tracked ``pose``."""
        if self.belief is None or self.camera is None:
            return None
        self._pending.add(
            taken_at,
            FrameOutput(
                np.array([*out.correction_mm, *out.correction_deg], float), out.target_visible, out.quality,
                out.contact, out.gain_error_db, out.best_depth_mm,
                None if out.correction_sd is None else np.array(out.correction_sd, float),
            ),
        )  # fmt: skip
        folded_reason = self._pending.fold(self.belief, self.camera.pose_at, taken_at)
        position = pose.position_mm if pose is not None else None
        rotation = pose.patient_from_probe if pose is not None and position is not None else None
        step = self.belief.answer(now, position, rotation, out.quality)
        if folded_reason is not None:
            step = BeliefStep(step.estimate, step.confidence, folded_reason, step.correction)
        if step.reset_reason is not None:
            self.log.warning("target belief restarted: %s", step.reset_reason)
            self.state.event("warning", f"guidance restarted: {step.reset_reason}", reason=step.reset_reason)
        self.belief_step = step
        if step.correction is None:
            return None
        c = step.correction
        sigma = 5.0 / max(step.confidence, 0.05)
        return Correction(
            (float(c[0]), float(c[1]), float(c[2])), (float(c[3]), float(c[4]), float(c[5])), sigma, sigma
        )

    @property
    def guidance_source(self) -> str:
        """What the last frame's correction came from: "belief" (tracked) or "model" (the image)."""
        step = self.belief_step
        return "belief" if step is not None and step.correction is not None else "model"

    def set_preset(self, preset: str | None, reason: str = "preset changed") -> None:
        """Restart the target belief: a new exam preset (its prior), or None to keep the preset (a new
        camera calibration puts the tracked poses in another frame)."""
        self.skin.forget()
        if self.belief is None:
            return
        self.belief.reset(preset)
        self._pending.clear()
        name = self.belief.belief.preset
        self.state.event("info", f"guidance restarted ({reason}; preset {name or 'any'})", reason=reason)

    def publish(self, message: dict[str, Any]) -> None:
        message["t"]["published"] = round(self.clock.now(), 6)
        self.publisher.publish_guidance(message)
        now = self.clock.now()
        if self.last_frame_time is not None and now > self.last_frame_time:
            inst = 1.0 / (now - self.last_frame_time)
            self.fps = inst if self.fps == 0 else 0.9 * self.fps + 0.1 * inst
        self.last_frame_time, self.last_frame_id = now, message["frame_id"]
        self.frames_out += 1
        if self.on_guided is not None:
            self.on_guided(message)

    def step(self, frame: Any) -> tuple[dict[str, Any], list[Change]]:
        """One frame through every stage on the caller's thread (simulated-time evaluation)."""
        work = self.infer(self.preprocess(self.receive(frame)))
        changes = self.control(work)
        message = self.guide(work)
        self.publish(message)
        self.state.publish_settings()
        return message, changes

    # --- changes through the link (the probe's settings state is self.state) ------------------------

    def _apply(self, change: Change, source: str, frame_id: int | None = None) -> bool:
        """Set a parameter through the link (read back) and tell everyone why."""
        now = self.clock.now()
        slack = self.limits.gain_step_db if change.param == GAIN else 0.0
        self.state.announce(change.param, change.new, slack)  # frames may beat the read-back
        try:
            readback = float(self.link.set_param(change.param, change.new))
        except Exception as e:
            self.state.cancel(change.param)
            self.log.warning("could not set %s to %s: %s", change.param, change.new, e)
            self.state.event(
                "warning",
                f"could not set {change.param} to {change.new}: {e}",
                param=change.param,
                source=source,
            )
            return False
        self.state.confirm(change.param, readback, now)
        if change.param == GAIN:
            self.auto_gain.reset(now)
        elif change.param == DEPTH:
            self.auto_depth.reset(now)
            self.auto_gain.reset(now)  # a new depth shows other tissue (and TGC): the best gain moves
        kind = "auto_change" if source == "auto" else "manual_change"
        self.log.info(
            "%s %s %s -> %s (%s)", kind.replace("_", " "), change.param, change.old, readback, change.reason
        )
        self.state.event(
            kind,
            f"{change.param} {change.old:g} -> {readback:g}: {change.reason}",
            param=change.param,
            old=change.old,
            new=readback,
            reason=change.reason,
            source=source,
            **({"frame_id": frame_id} if frame_id is not None else {}),
        )
        if abs(readback - change.new) > 1e-6:
            self.state.event(
                "warning",
                f"{change.param}: asked for {change.new:g}, probe reports {readback:g}",
                param=change.param,
                source=source,
            )
        self.state.publish_settings()
        return True

    def set_manual(self, param: str, value: float, source: str = "command") -> float:
        """A manual setting (display command): applied, and auto-tuning of it pauses."""
        now = self.clock.now()
        old = self.state.setting(param)
        change = Change(
            param, float(old) if old is not None else float("nan"), float(value), "manual setting"
        )
        if not self._apply(change, source):
            raise RuntimeError(f"the probe did not accept {param} = {value}")
        self.state.note_manual(param, now)
        if param == GAIN:
            self.contact_guard = ContactGainGuard(self.limits)  # the user's gain is not ours to undo
        return float(self.state.setting(param) or 0.0)

    def on_link_event(self, event: dict[str, Any]) -> None:
        """A probe-link event, on the link's reader thread (see :mod:`service.daemon.link_events`)."""
        if event.get("type") in ("probe_changed", "link_restored"):  # another probe, or the first one
            limits = limits_from_info(getattr(self.link, "info", None))
            if limits != self.limits:  # its own limits, nothing of the old (or the defaults)
                self.limits = limits
                self.auto_gain, self.auto_depth = AutoGain(limits), AutoDepth(limits)
                self.contact_guard = ContactGainGuard(limits)
        handle_link_event(self.state, event, lambda: self.last_frame_id)
        if event.get("type") == "capture_button":
            self.capture_latest("probe", "probe button")

    def set_frozen(self, frozen: bool, source: str = "command") -> bool:
        """Freeze or unfreeze the probe (``link.freeze``, read back); returns the probe's state."""
        freeze = getattr(self.link, "freeze", None)
        state = bool(freeze(frozen) if freeze is not None else self.link.set_param("frozen", frozen))
        self.state.set_frozen(state, source, "image frozen" if state else "image live")
        return state

    def swap_model(self, model: Model) -> None:
        with self._model_lock:
            self.model = model
            self._set_clip(model)  # another model's features mean nothing to it

    def _set_clip(self, model: Model) -> None:
        """The frames ``model``'s clip head reads (``history``; None: a single-frame model) and the model
        they belong to, checked once here: a protocol check costs ~40 us, more than the head itself."""
        self._clip_model: ClipModel | None = None
        self.history: FrameHistory | None = None
        if isinstance(model, ClipModel) and model.clip_contract is not None:
            self._clip_model, self.history = model, FrameHistory(model.clip_contract)

    def _clip(self, model: Model, out: ModelOutput, taken_at: float, pose: TrackedPose | None) -> ModelOutput:
        """The frame's output with the clip head's correction and spread, read from this frame and the
        kept earlier ones with the tracked motion between them (none tracked: the motion unknown)."""
        history, clip_model = self.history, self._clip_model
        if history is None or clip_model is None or clip_model is not model or out.features is None:
            return out
        position = pose.position_mm if pose is not None else None
        rotation = pose.patient_from_probe if pose is not None and position is not None else None
        kept = KeptFrame(taken_at, np.asarray(out.features, np.float32).ravel(), position, rotation)
        history.add(kept)
        return clip_model.with_clip(out, *history.inputs(kept))

    # --- threads ------------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        stages: list[tuple[str, Callable[[], None]]] = [
            ("acquire", self._acquire_loop),
            (
                "preprocess",
                lambda: self._loop("preprocess", lambda w: self._to(["infer"], self.preprocess(w))),
            ),
            ("infer", lambda: self._loop("infer", lambda w: self._to(["guide", "control"], self.infer(w)))),
            ("control", lambda: self._loop("control", self.control)),
            ("guide", lambda: self._loop("guide", lambda w: self.publish(self.guide(w)))),
        ]
        for name, target in stages:
            t = threading.Thread(target=target, name=f"stage-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        for slot in self.slots.values():
            slot.close()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _to(self, names: list[str], work: Work) -> None:
        for n in names:
            self.slots[n].put(work)

    def _acquire_loop(self) -> None:
        last_id = None
        while not self._stop.is_set():
            self.heartbeats["acquire"] = time.monotonic()
            try:
                frame = self.link.latest_frame(timeout=0.1)
                if frame is None or frame.frame_id == last_id:
                    continue
                last_id = frame.frame_id
                self.slots["preprocess"].put(self.receive(frame))
            except Exception:
                self._stage_error("acquire")
                self._stop.wait(0.05)  # real time: a failing link must not spin the CPU

    def _loop(self, name: str, body: Callable[[Work], Any]) -> None:
        slot = self.slots[name]
        while not self._stop.is_set():
            self.heartbeats[name] = time.monotonic()
            work = slot.get(timeout=0.2)
            if work is None:
                continue
            try:
                body(work)
            except Exception:
                self._stage_error(name)

    def _stage_error(self, stage: str) -> None:
        self.errors += 1
        if self.errors <= 5 or self.errors % 100 == 0:  # a broken frame source must not flood the log
            self.log.exception("stage %s failed (error %d); frame dropped", stage, self.errors)

    def stalled_loops(self, max_age_s: float) -> list[str]:
        """Stage loops that have not turned for ``max_age_s`` (real time), or never did: a hang."""
        now = time.monotonic()
        return [n for n in ("acquire", *self.slots) if now - self.heartbeats.get(n, -1e18) > max_age_s]

    def dropped(self) -> dict[str, int]:
        return {n: s.dropped for n, s in self.slots.items()}


def _unit(x: float) -> float:
    return float(min(1.0, max(0.0, x)))
