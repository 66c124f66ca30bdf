"""One closed-loop episode on simulated time, in one arm.

Per frame (``fps`` of simulated time): render the frame at the novice's pose with the probe's current
settings, run it through the real pipeline (``Pipeline.step``: model, auto gain/depth, guidance),
turn the published instruction back into a motion request (``instruction_to_motion``) and let the
novice carry it out for one frame time. Arms:

- ``guided``: the model under test; the novice follows the instructions;
- ``camera``: the same, and the pipeline gets tracked poses (:class:`SimTracker`, the measured
  tracker model): the target belief guides;
- ``unguided``: the same pipeline (auto gain/depth still work) but the novice searches on its own;
- ``oracle``: the model replaced by ground truth (:class:`OracleModel`); the novice follows.

The episode ends at success (see :mod:`service.tools.evaluate.metrics`) or after ``limit_s``. The guided, camera
and oracle arms then hold still for ``hold_s`` to count instruction flicker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.daemon.clock import SimClock
from service.daemon.config import AutoConfig
from service.daemon.pipeline import Pipeline
from service.policy.guidance import (
    BASIS_DEFAULT,
    DEFAULT_PATIENT_FROM_PROBE,
    Instruction,
    instruction_to_motion,
)
from service.seams import MemoryPublisher, Model
from service.tools.evaluate.metrics import (
    ARMS,
    GAIN_FRAMES,
    LIMIT_S,
    SETTLE_S,
    EpisodeResult,
    at_plane,
    depth_ok,
    first_converged,
    flicker_changes,
    gain_ok,
)
from service.tools.evaluate.rendered_tracker import RenderedTracker
from service.tools.evaluate.simdevice import OracleModel, SimFrame, SimProbe, SimTracker
from sim.novice import NoviceUser, UnguidedNovice, random_start_pose
from sim.observability import view_residual
from sim.phantom import Phantom, make_phantom
from sim.scanner import Scanner
from sim.truth import ground_truth, pose_error
from sim.types import ImagingSettings, Pose

log = logging.getLogger(__name__)

PRESET_CYCLE = ("abdomen", "vascular", "cardiac")
GAIN_OFFSET_DB = (5.0, 20.0)  # |start gain − best gain|, random sign
TRACKING = ("model", "full")  # the camera arm's tracker: the measured model, or the real chain
GAIN_CURVE_FRAMES = 20  # frames whose gain error is recorded (convergence curves)
CAPTURE_S = 5.0  # after the hold, the novice follows the guidance this long more for the capture


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that makes an episode, drawn from its seed (the phantom's seed too)."""

    seed: int
    preset: str
    start_pose: Pose
    start_settings: ImagingSettings

    @staticmethod
    def draw(seed: int, preset: str | None = None, phantom: Phantom | None = None) -> EpisodeSpec:
        """The start: 30–80 mm and 20–60° from the standard view on the skin, gain 5–20 dB off the
        best, a depth step other than the one that frames the target."""
        name = preset or PRESET_CYCLE[seed % len(PRESET_CYCLE)]
        ph = phantom or make_phantom(name, seed)
        p = ph.preset
        rng = np.random.default_rng([int(seed), 0xE7A1])
        start = random_start_pose(ph, seed)
        right_depth = ground_truth(ph, ph.target_pose, p.default).best_depth_mm
        depth = float(rng.choice([d for d in p.depth_steps_mm if d != right_depth]))
        probe_settings = p.default.replace(depth_mm=depth)
        best = ground_truth(ph, start, probe_settings).best_gain_db
        offset = float(rng.uniform(*GAIN_OFFSET_DB)) * float(rng.choice([-1.0, 1.0]))
        lo, hi = p.gain_range_db
        gain = float(np.clip(round(best + offset), lo, hi))
        if abs(gain - best) < GAIN_OFFSET_DB[0]:  # clipped at the end of the range: go the other way
            gain = float(np.clip(round(best - offset), lo, hi))
        return EpisodeSpec(seed, name, start, probe_settings.replace(gain_db=gain))


def instruction_from_message(
    message: dict[str, Any], patient_from_probe: np.ndarray | None = None
) -> Instruction:
    """The instruction a display shows, back from the published guidance message.

    Words in the default hold (``basis`` ``assumed_marker_toward_head``) are turned into motion in
    that hold, as the novice was told to hold the probe. Words named from the tracked pose (``camera``,
    ``belief``) name the patient's directions: the novice, who sees the probe, turns them into a motion
    with the probe's real orientation (``patient_from_probe``).
    """
    basis = str(message.get("basis", BASIS_DEFAULT))
    if basis == BASIS_DEFAULT:
        rot_m = DEFAULT_PATIENT_FROM_PROBE
    elif patient_from_probe is None:
        raise ValueError(
            f"guidance basis {basis!r} names patient directions: the probe's orientation is needed"
        )
    else:
        rot_m = np.asarray(patient_from_probe, float)
    rot = tuple((float(r[0]), float(r[1]), float(r[2])) for r in rot_m)
    return Instruction(
        str(message["instruction"]),
        float(message.get("magnitude", 0.0)),
        str(message.get("unit", "")),
        float(message.get("confidence", 0.0)),
        basis,
        rot,
    )


class Reader:
    """How the novice reads the display: new words at once, the number only every ``reread_s``.

    The magnitude in a guidance message follows the correction every frame; a person acts on the
    words when they change and glances at the number now and then. Handing the novice a new request
    every frame would restart its reaction delay every frame and freeze it.
    """

    def __init__(self, reread_s: float = 1.0) -> None:
        self.reread_s = reread_s
        self._id: str | None = None
        self._read_at = -math.inf
        self.request: tuple[Any, Any] | None = None

    def read(
        self, message: dict[str, Any], now: float, patient_from_probe: np.ndarray | None = None
    ) -> tuple[Any, Any] | None:
        if message["instruction"] != self._id or now - self._read_at >= self.reread_s:
            self._id, self._read_at = message["instruction"], now
            motion = instruction_to_motion(instruction_from_message(message, patient_from_probe))
            self.request = None if motion is None else (motion.translation_mm, motion.rotation_deg)
        return self.request


def run_episode(
    spec: EpisodeSpec,
    arm: str,
    model_factory: Callable[[], Model],
    noise: float,
    fps: float = 10.0,
    limit_s: float = LIMIT_S,
    hold_s: float = 3.0,
    capture_s: float = CAPTURE_S,
    phantom: Phantom | None = None,
    scanner: Scanner | None = None,
    image_size: tuple[int, int] = (256, 256),
    tracking: str = "model",
    on_frame: Callable[[Pose, Pipeline], None] | None = None,
) -> EpisodeResult:
    """``tracking`` (camera arm): ``model`` (the tracker model's measured figures) or ``full`` (the
    real chain on rendered camera frames, :mod:`service.tools.evaluate.rendered_tracker`).
    ``on_frame(pose, pipeline)``: called after every guided frame with the true pose it was taken at
    (diagnostics that compare what the pipeline decided with the truth; nothing in an arm sees it).

    After the hold, the novice follows the guidance again for up to ``capture_s``, as a clinician
    does until the display says the view was captured; the episode records whether an automatic
    capture was taken at the plane (anywhere on the way, in the hold or then) and how many elsewhere."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}")
    if fps <= 0 or limit_s <= 0:
        raise ValueError(f"fps and limit_s must be positive, got {fps}, {limit_s}")
    ph = phantom or make_phantom(spec.preset, spec.seed)
    sc = scanner or Scanner(ph, size=image_size)
    dt = 1.0 / fps
    target = ph.target_pose
    probe = SimProbe(ph.preset, spec.start_settings)
    oracle = OracleModel(ph) if arm == "oracle" else None
    blank = np.zeros(sc.size, np.uint8)
    model: Model = oracle if oracle is not None else model_factory()
    clock = SimClock()
    display = MemoryPublisher(keep_guidance=1)
    if tracking not in TRACKING:
        raise ValueError(f"unknown tracking {tracking!r} (choose {', '.join(TRACKING)})")
    tracker: SimTracker | RenderedTracker | None = None
    if arm == "camera":
        tracker = SimTracker(spec.seed) if tracking == "model" else RenderedTracker(ph, spec.seed)
    pipeline = Pipeline(
        probe, model, display, clock, AutoConfig(), name=f"eval-{arm}-{spec.seed}", camera=tracker,
        preset=spec.preset,
    )  # fmt: skip
    novice = NoviceUser(noise, spec.seed, ph)
    searcher = UnguidedNovice(spec.seed) if arm == "unguided" else None
    reader = Reader()

    pose = spec.start_pose
    start_gt = ground_truth(ph, pose, spec.start_settings)
    trajectory: list[tuple[float, float, float]] = []
    gain_curve: list[float] = []
    shown: dict[str, int] = {}
    time_to_plane: float | None = None
    frame = 0
    seen_events = 0
    taken: list[tuple[float, float, float]] = []  # (t, mm, deg from the view) of each automatic capture

    def at_view() -> list[bool]:
        return [at_plane(mm, deg) for _, mm, deg in taken]

    def step(pose: Pose) -> dict[str, Any]:
        nonlocal frame, seen_events
        settings = probe.settings
        if oracle is not None:
            oracle.pose = pose
        t = clock.now()
        if tracker is not None:
            tracker.observe(pose, t)
        # The oracle reads the truth, never the pixels: its frames are not rendered (over half its cost).
        image = blank if oracle is not None else sc.render(pose, settings, frame)
        message, _ = pipeline.step(SimFrame(frame, round(t * 1e6), t, image, probe.params()))
        if on_frame is not None:
            on_frame(pose, pipeline)
        frame += 1
        new, seen_events = display.events[seen_events:], len(display.events)
        for e in new:  # an automatic capture: of the standard view, or of something else
            if e.get("kind") == "capture" and e.get("source") == "auto":
                taken.append((t, *pose_error(pose, target)))
        return message

    n_frames = round(limit_s * fps)
    for k in range(n_frames):
        t = clock.now()
        settings = probe.settings
        dist, angle = pose_error(pose, target)
        trajectory.append((round(t, 3), round(dist, 2), round(angle, 2)))
        gt = None
        if k < GAIN_CURVE_FRAMES:
            gt = ground_truth(ph, pose, settings)
            gain_curve.append(round(gt.gain_error_db, 2))
        if at_plane(dist, angle):  # cheap pose check first; ground truth only near the plane
            gt = gt or ground_truth(ph, pose, settings)
            if gt.contact and gain_ok(gt.gain_error_db) and depth_ok(gt.target_fill):
                time_to_plane = t
                break
        message = step(pose)
        shown[message["instruction"]] = shown.get(message["instruction"], 0) + 1
        if searcher is not None:
            pose = searcher.step(pose, dt, ph)
        else:
            pose = novice.follow(pose, reader.read(message, t, pose.rotation_matrix()), dt)
        clock.advance(dt)

    hold_ids: list[str] = []
    held = 0.0
    if searcher is None and hold_s > 0:
        for _ in range(round(hold_s * fps)):
            hold_ids.append(step(pose)["instruction"])
            pose = novice.follow(pose, None, dt)
            clock.advance(dt)
        held = len(hold_ids) * dt
    final_dist, final_angle = pose_error(pose, target)
    final_view = view_residual(ph, pose)
    standard = ground_truth(ph, target, probe.settings)
    auto_changes = sum(1 for e in display.events if e.get("kind") == "auto_change")
    if searcher is None:  # the figures above are the hold's; this only looks for the capture
        for _ in range(round(capture_s * fps)):
            if any(at_view()):
                break
            t = clock.now()
            message = step(pose)
            pose = novice.follow(pose, reader.read(message, t, pose.rotation_matrix()), dt)
            clock.advance(dt)
    return EpisodeResult(
        seed=spec.seed,
        preset=spec.preset,
        arm=arm,
        noise=noise,
        success=time_to_plane is not None,
        time_to_plane_s=time_to_plane,
        frames=frame,
        start_distance_mm=float(pose_error(spec.start_pose, target)[0]),
        start_angle_deg=float(pose_error(spec.start_pose, target)[1]),
        start_gain_error_db=float(start_gt.gain_error_db),
        start_depth_mm=float(spec.start_settings.depth_mm),
        depth_ok_at_end=depth_ok(standard.target_fill),
        gain_converged_frame=first_converged(gain_curve[: GAIN_FRAMES + 1]),
        hold_changes=flicker_changes(hold_ids, round(SETTLE_S * fps)),
        hold_s=held,
        auto_changes=auto_changes,
        lifts=novice.lifts,
        final_distance_mm=final_dist,
        final_angle_deg=final_angle,
        captured_at_view=any(at_view()),
        captures_off_view=at_view().count(False),
        captures=[(round(t, 2), round(mm, 1), round(deg, 1)) for t, mm, deg in taken],
        final_view=final_view,
        trajectory=trajectory,
        gain_curve=gain_curve,
        instructions=shown,
    )
