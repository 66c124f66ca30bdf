"""Where the target view is in the patient's body: a belief fused from every frame's model output and
the tracked probe pose it was taken at. Pure numpy; time, poses and randomness are passed in.

The target view's probe pose ``T`` (patient frame) does not move while the probe does, so each frame
is an observation of the same thing. The belief is a set of weighted **particles** over ``T``: it can
hold two hypotheses on an axis (a sweep whose sign the model cannot tell) and settle them as the
evidence comes, which a single Gaussian cannot. Every number about the model and the patients comes
from the manifest's ``guidance`` section (``models/guidance_calibration.py``):

- the **prior** (training phantoms): where the preset's standard view lies relative to the stickers
  (the patient frame), as a mean pose and a covariance of offsets;
- the **correction** model: per axis and band of the model's ``target_visible``, the model's output is
  ``±gain · c + noise(sigma)`` of the true correction ``c``, with the sign flipped at rate ``flip``;
- the **view-score** fields: quality and visibility fall off as ``exp(−½ Σ (c_a/s_a)²)``: a low score
  at a tracked pose says "not here", which is how the belief remembers where it has looked.

Frames taken at nearly the same pose are not independent (the image barely changes): each frame's
log-likelihood is tempered by how far the probe moved since the previous one (``motion_mm``,
``motion_deg`` per unit of evidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_bridge.kit import quat_to_matrix

AXES = ("dx", "dy", "dz", "rx", "ry", "rz")
# How different two target poses must be to count as different hypotheses (mode finding, spread).
MODE_SCALE = np.array([6.0, 6.0, 6.0, 8.0, 8.0, 8.0])
MIN_SD = 0.5  # mm / deg: no frame is believed closer than this (the calibrated bands' own floor)


# --- rotations, vectorised ---------------------------------------------------------------------------


def rotvecs_to_matrices(rotvec_deg: np.ndarray) -> np.ndarray:
    """(N, 3) rotation vectors in degrees -> (N, 3, 3) matrices (Rodrigues)."""
    v = np.radians(np.asarray(rotvec_deg, float)).reshape(-1, 3)
    theta = np.linalg.norm(v, axis=1)
    k = v / np.where(theta > 1e-12, theta, 1.0)[:, None]
    kx = np.zeros((len(v), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], (1.0 - np.cos(theta))[:, None, None]
    return np.eye(3)[None] + s * kx + c * (kx @ kx)


def matrices_to_rotvecs(m: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 3) rotation vectors in degrees (angle in [0, 180))."""
    m = np.asarray(m, float).reshape(-1, 3, 3)
    cos = np.clip((np.trace(m, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    axis = np.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], axis=1)
    sin = np.sin(angle)
    factor = np.where(sin > 1e-6, angle / (2.0 * np.where(sin > 1e-6, sin, 1.0)), 0.5)
    return np.degrees(axis * factor[:, None])


def pose_distance(
    position_a: np.ndarray, rotation_a: np.ndarray, position_b: np.ndarray, rotation_b: np.ndarray
) -> tuple[float, float]:
    """(mm between the positions, degrees of the rotation from a to b)."""
    moved = float(np.linalg.norm(np.asarray(position_b) - np.asarray(position_a)))
    turned = float(np.linalg.norm(matrices_to_rotvecs((np.asarray(rotation_a).T @ rotation_b)[None])[0]))
    return moved, turned


def chordal_mean(rotations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The rotation nearest the weighted sum of matrices (SVD projection)."""
    u, _, vt = np.linalg.svd(np.einsum("n,nij->ij", weights, rotations))
    d = np.sign(np.linalg.det(u @ vt))
    return np.asarray(u @ np.diag([1.0, 1.0, d]) @ vt)


# --- the calibration the belief reads from the manifest ------------------------------------------------


@dataclass(frozen=True)
class AxisNoise:
    gain: float
    sigma: float
    flip: float


@dataclass(frozen=True)
class ScoreField:
    peak: float  # the score the model gives at the view itself
    scales: np.ndarray  # (6,) per axis
    sigma: float

    def predict(self, corrections: np.ndarray) -> np.ndarray:
        return np.asarray(self.peak * np.exp(-0.5 * np.sum((corrections / self.scales) ** 2, axis=1)))


@dataclass(frozen=True)
class Prior:
    mean_position_mm: np.ndarray
    mean_rotation: np.ndarray  # 3×3
    covariance: np.ndarray  # 6×6: translation mm (patient frame), rotation vector deg (mean's frame)


@dataclass(frozen=True)
class BeliefCalibration:
    priors: dict[str, Prior]
    bands: tuple[tuple[float, tuple[AxisNoise, ...]], ...]  # (visible_from, six axes), ascending
    quality: dict[str, ScoreField]  # per preset
    visibility: dict[str, ScoreField]

    @staticmethod
    def from_manifest(manifest: Mapping[str, Any] | None) -> BeliefCalibration | None:
        """The calibration in the manifest's ``guidance`` section; None when the model has none."""
        section = (manifest or {}).get("guidance")
        if not section:
            return None
        priors = {
            name: Prior(
                np.array(p["mean_position_mm"], float),
                quat_to_matrix(np.array(p["mean_quat_wxyz"], float)),
                np.array(p["covariance"], float),
            )
            for name, p in section["prior"].items()
        }
        bands = tuple(
            (
                float(b["visible_from"]),
                tuple(
                    AxisNoise(b["axes"][a]["gain"], b["axes"][a]["sigma"], b["axes"][a]["flip"]) for a in AXES
                ),
            )
            for b in section["observation"]["visible_bands"]
        )

        def fields(key: str) -> dict[str, ScoreField]:
            return {
                name: ScoreField(
                    float(f["peak"]), np.array([f["scales"][a] for a in AXES], float), float(f["sigma"])
                )
                for name, f in section[key].items()
            }

        return BeliefCalibration(priors, bands, fields("quality"), fields("visibility"))

    def band(self, visible: float) -> tuple[AxisNoise, ...]:
        chosen = self.bands[0][1]
        for lo, axes in self.bands:
            if visible >= lo:
                chosen = axes
        return chosen


@dataclass(frozen=True)
class BeliefParams:
    particles: int = 1500
    # This much motion (or ``motion_deg``) makes one independent observation: the model's errors are
    # systematic over a region of the body, not per frame, so nearby frames are one opinion.
    motion_mm: float = 15.0
    motion_deg: float = 15.0
    # The view scores decorrelate sooner (they fall off within millimetres near the view).
    score_motion_mm: float = 4.0
    score_motion_deg: float = 4.0
    min_evidence: float = 0.02  # a still probe still adds a little (tremor changes the image)
    outlier: float = 0.05  # share of any observation that may be wild (a model glitch, a bubble)
    prior_inflation: float = 1.3  # the prior's spread times this (the population is only a sample)
    roughen_mm: float = 1.0  # jitter added at resampling (keeps the cloud from collapsing to copies)
    roughen_deg: float = 1.0
    # At each resampling this share of the particles is drawn afresh from the prior, so a belief that
    # settled on the wrong place can still find the right one (a confident error is otherwise final).
    reinject: float = 0.05
    # ... and this share drawn where the last observation puts the target, on the axes the model reads
    # with a gain of at least ``reset_gain`` (sensor resetting, Lenser & Veloso 2000): a cloud that
    # collapsed onto a hypothesis wrong on one axis cannot jitter its way to the truth, and a draw
    # from the wide prior almost never lands near it.
    observation_reinject: float = 0.05
    reset_gain: float = 0.5
    reset_sigmas: float = 3.0
    # The calibrated spreads times this: one phantom's errors are alike from frame to frame, and the
    # per-axis terms are not independent, so the raw figures would make the belief overconfident.
    noise_inflation: float = 1.5


@dataclass(frozen=True)
class Observation:
    """One frame's model output at one tracked pose. Corrections are probe-frame (mm, deg)."""

    correction: np.ndarray  # (6,)
    visible: float
    quality: float
    use_scores: bool = True  # the view scores mean something (contact, gain and depth about right)
    # The model's own 1 sd per axis (a clip head trained to give it): the correction is then read as
    # the truth plus that much noise, in place of the calibrated bands' gain, spread and flips.
    sd: np.ndarray | None = None


@dataclass(frozen=True)
class Estimate:
    """The belief's answer: the most supported target pose, how sure, and the correction to it."""

    position_mm: np.ndarray
    rotation: np.ndarray
    correction: np.ndarray  # (6,) probe-frame motion from the pose it was asked at
    spread: np.ndarray  # (6,) weighted RMS distance of all particles from it, probe frame
    mass: float  # share of the belief's weight in the chosen mode (0-1)


# --- the belief ----------------------------------------------------------------------------------------


def corrections_to(probe_position: np.ndarray, probe_rotation: np.ndarray, positions: np.ndarray,
                   rotations: np.ndarray) -> np.ndarray:  # fmt: skip
    """(N, 6) probe-frame corrections (translation mm, rotation vector deg) from the probe pose to
    each target pose: what ``sim.types.Pose.motion_to`` gives, for N poses at once."""
    rt = np.asarray(probe_rotation, float).T
    t = (np.asarray(positions) - np.asarray(probe_position)) @ rt.T
    r = matrices_to_rotvecs(rt[None] @ rotations)
    return np.concatenate([t, r], axis=1)


def observation_noise(obs: Observation, cal: BeliefCalibration) -> tuple[AxisNoise, ...]:
    """Per axis, how the observation relates to the true correction: the model's own spread when it
    gives one (gain 1, no flips), else the calibrated band of its ``visible``."""
    if obs.sd is not None:
        return tuple(AxisNoise(1.0, max(float(v), MIN_SD), 0.0) for v in obs.sd)
    return cal.band(obs.visible)


def observation_loglik(
    pred: np.ndarray,
    obs: Observation,
    cal: BeliefCalibration,
    outlier: float,
    preset: np.ndarray | str,
    score_weight: float = 1.0,
    inflation: float = 1.0,
) -> np.ndarray:
    """Log-likelihood (up to a constant) of one observation under each particle's correction
    (``preset``: the preset whose view-score fields apply, one name or one per particle); the
    view-score terms are weighted by ``score_weight`` relative to the correction terms."""
    ll = np.zeros(len(pred))
    for i, noise in enumerate(observation_noise(obs, cal)):
        c, o, s = pred[:, i], float(obs.correction[i]), noise.sigma * inflation
        same = np.exp(-0.5 * ((o - noise.gain * c) / s) ** 2)
        flipped = np.exp(-0.5 * ((o + noise.gain * c) / s) ** 2)
        ll += np.log((1.0 - outlier) * ((1.0 - noise.flip) * same + noise.flip * flipped) + outlier * 0.1)
    if obs.use_scores:
        names = np.broadcast_to(np.asarray(preset), (len(pred),))
        for score, fields in ((obs.quality, cal.quality), (obs.visible, cal.visibility)):
            z = np.zeros(len(pred))
            for name in np.unique(names):
                sel = names == name
                field = fields[str(name)]
                z[sel] = (score - field.predict(pred[sel])) / (field.sigma * inflation)
            ll += score_weight * np.log((1.0 - outlier) * np.exp(-0.5 * z * z) + outlier * 0.1)
    return ll


class TargetBelief:
    """Particles over the target view's pose in the patient frame.

    ``update(obs, probe_position, probe_rotation)`` folds one frame in; ``estimate(...)`` gives the
    most supported pose and the correction to it from a probe pose; ``reset(preset)`` starts over
    from the population prior.
    """

    def __init__(self, cal: BeliefCalibration, params: BeliefParams | None = None, seed: int = 0) -> None:
        self.cal = cal
        self.params = params or BeliefParams()
        self.rng = np.random.default_rng(seed)
        self.preset: str | None = None
        self.observations = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._mode: tuple[np.ndarray, np.ndarray] | None = None  # last chosen mode: position, rotation
        self.reset(None)

    # -- state

    def reset(self, preset: str | None) -> None:
        """Back to the prior of ``preset`` (None: a mixture of every preset's prior)."""
        self.positions, self.rotations, self.kinds = self._draw_prior(preset, self.params.particles)
        self.logw = np.zeros(self.params.particles)
        self.preset = preset
        self.observations = 0
        self._last, self._mode = None, None
        self._last_observation: Observation | None = None

    def _draw_prior(self, preset: str | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names = [preset] if preset in self.cal.priors else sorted(self.cal.priors)
        counts = np.full(len(names), n // len(names))
        counts[: n - counts.sum()] += 1
        pos, rot, kinds = [], [], []
        for name, k in zip(names, counts, strict=True):
            kinds.append(np.full(int(k), name))
            prior = self.cal.priors[name]
            cov = prior.covariance * self.params.prior_inflation**2
            offsets = self.rng.multivariate_normal(np.zeros(6), cov, size=int(k))
            pos.append(prior.mean_position_mm + offsets[:, :3])
            rot.append(prior.mean_rotation[None] @ rotvecs_to_matrices(offsets[:, 3:]))
        # kinds: the preset each particle's hypothesis belongs to (whose view-score fields apply)
        return np.concatenate(pos), np.concatenate(rot), np.concatenate(kinds)

    def log_prior(self, positions: np.ndarray, rotations: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Log density (up to a constant) of target poses under their preset's (inflated) prior."""
        out = np.zeros(len(positions))
        for name in np.unique(kinds):
            prior = self.cal.priors[str(name)]
            sel = kinds == name
            offsets = np.concatenate(
                [
                    positions[sel] - prior.mean_position_mm,
                    matrices_to_rotvecs(prior.mean_rotation.T[None] @ rotations[sel]),
                ],
                axis=1,
            )
            inv = np.linalg.inv(prior.covariance * self.params.prior_inflation**2)
            out[sel] = -0.5 * np.einsum("ni,ij,nj->n", offsets, inv, offsets)
        return out

    @property
    def weights(self) -> np.ndarray:
        w = np.exp(self.logw - self.logw.max())
        return np.asarray(w / w.sum())

    def effective_size(self) -> float:
        w = self.weights
        return float(1.0 / np.sum(w * w))

    # -- evidence

    def evidence_weight(
        self, probe_position: np.ndarray, probe_rotation: np.ndarray, scores: bool = False
    ) -> float:
        """How much independent evidence a frame at this pose adds after the previous frame's: the
        model's corrections (``scores`` False) or its view scores (True)."""
        p = self.params
        if self._last is None:
            return 1.0
        moved, turned = pose_distance(self._last[0], self._last[1], probe_position, probe_rotation)
        mm, deg = (p.score_motion_mm, p.score_motion_deg) if scores else (p.motion_mm, p.motion_deg)
        return min(1.0, p.min_evidence + moved / mm + turned / deg)

    def update(self, obs: Observation, probe_position: np.ndarray, probe_rotation: np.ndarray) -> float:
        """Fold one observation in; returns the evidence weight its corrections were given."""
        weight = self.evidence_weight(probe_position, probe_rotation)
        score_weight = self.evidence_weight(probe_position, probe_rotation, scores=True)
        pred = corrections_to(probe_position, probe_rotation, self.positions, self.rotations)
        self.logw += weight * observation_loglik(
            pred, obs, self.cal, self.params.outlier, self.kinds, score_weight / max(weight, 1e-9),
            self.params.noise_inflation,
        )  # fmt: skip
        self.logw -= self.logw.max()
        self._last = (np.asarray(probe_position, float).copy(), np.asarray(probe_rotation, float).copy())
        self._last_observation = obs
        self.observations += 1
        if self.effective_size() < 0.5 * len(self.logw):
            self._resample()
        return weight

    def _resample(self) -> None:
        """Systematic resampling, then a small jitter so copies become distinct hypotheses."""
        w = self.weights
        n = len(w)
        u = (self.rng.uniform() + np.arange(n)) / n
        idx = np.minimum(np.searchsorted(np.cumsum(w), u), n - 1)
        p = self.params
        old_positions, old_rotations = self.positions, self.rotations
        # Jitter in proportion to the cloud's own spread (Gordon's roughening, K·σ·N^(-1/d)): wide
        # while the belief is wide, so the cloud can travel to evidence that lies between its
        # particles, and down to the floor once it has settled.
        k = 0.4 * n ** (-1.0 / 6.0)
        pos_sd = np.maximum(p.roughen_mm, k * self.positions[idx].std(axis=0))
        centre = chordal_mean(self.rotations[idx], np.full(n, 1.0 / n))
        rot_sd = np.maximum(
            p.roughen_deg, k * matrices_to_rotvecs(centre.T[None] @ self.rotations[idx]).std(axis=0)
        )
        self.positions = self.positions[idx] + self.rng.normal(0.0, 1.0, (n, 3)) * pos_sd
        jitter = rotvecs_to_matrices(self.rng.normal(0.0, 1.0, (n, 3)) * rot_sd)
        self.rotations = self.rotations[idx] @ jitter
        self.kinds = self.kinds[idx]
        # The jitter is a random walk: without the prior it would carry the cloud, resampling after
        # resampling, far outside where any patient's view lies. Weigh the moved particles by it.
        self.logw = self.log_prior(self.positions, self.rotations, self.kinds) - self.log_prior(
            old_positions[idx], old_rotations[idx], self.kinds
        )
        fresh = round(p.reinject * n)
        if fresh:
            slots = self.rng.choice(n, fresh, replace=False)
            pos, rot, kinds = self._draw_prior(self.preset, fresh)
            self.positions[slots], self.rotations[slots], self.kinds[slots] = pos, rot, kinds
            self.logw[slots] = 0.0
        self._reset_from_observation()
        self.logw -= self.logw.max()

    def _reset_from_observation(self) -> None:
        """Redraw ``observation_reinject`` of the particles where the last observation puts the target
        on its well-read axes (the rest of each particle kept), given the weight of the best."""
        obs, last = self._last_observation, self._last
        p = self.params
        count = round(p.observation_reinject * len(self.logw))
        if obs is None or last is None or count == 0:
            return
        bands = observation_noise(obs, self.cal)
        gains = np.array([b.gain for b in bands])
        sigmas = np.array([b.sigma for b in bands]) * p.noise_inflation
        read = gains >= p.reset_gain
        if not read.any():
            return
        # Only when no particle explains the observation on those axes (each within 3 sigma, either
        # sign): the cloud is then stuck, while an unexplained frame of a healthy cloud is an outlier.
        every = corrections_to(last[0], last[1], self.positions, self.rotations)[:, read]
        o, g, sg = obs.correction[read], gains[read], sigmas[read]
        z = np.minimum(np.abs(o - g * every), np.abs(o + g * every)) / sg
        if np.min(np.max(z, axis=1)) <= p.reset_sigmas:
            return
        slots = self.rng.choice(len(self.logw), count, replace=False)
        pred = corrections_to(last[0], last[1], self.positions[slots], self.rotations[slots])
        noise = self.rng.normal(0.0, 1.0, (count, int(read.sum())))
        pred[:, read] = (obs.correction[read] + noise * sigmas[read]) / gains[read]
        self.positions[slots] = last[0] + pred[:, :3] @ last[1].T
        self.rotations[slots] = last[1][None] @ rotvecs_to_matrices(pred[:, 3:])
        self.logw[slots] = self.logw.max()

    # -- answers

    def estimate(
        self, probe_position: np.ndarray, probe_rotation: np.ndarray, candidates: int = 96
    ) -> Estimate:
        """The densest hypothesis (kernel density over ``MODE_SCALE``), its local weighted mean, the
        correction to it from the given probe pose and its spread. The previous mode is kept while it
        holds at least 70% of the best density, so the instruction does not hop between hypotheses."""
        w = self.weights
        pred = corrections_to(probe_position, probe_rotation, self.positions, self.rotations)
        z = pred / MODE_SCALE
        order = np.argsort(-w)
        picks = order[: max(1, min(candidates, len(w)))]
        cand = z[picks]
        if self._mode is not None:
            prev = corrections_to(probe_position, probe_rotation, self._mode[0][None], self._mode[1][None])
            cand = np.vstack([cand, prev / MODE_SCALE])
        # Squared distances candidates × particles as |a|² + |b|² − 2ab: one matrix product instead
        # of a (candidates, particles, 6) temporary (the guide stage runs this on every frame).
        d2 = np.maximum(
            np.sum(cand * cand, axis=1)[:, None] + np.sum(z * z, axis=1)[None, :] - 2.0 * cand @ z.T, 0.0
        )
        density = (np.exp(-0.5 * d2) * w[None, :]).sum(axis=1)
        best = int(np.argmax(density))
        if self._mode is not None and density[-1] >= 0.7 * density[best]:
            best = len(cand) - 1
        local = np.exp(-0.5 * d2[best]) * w
        mass = float(local.sum())
        lw = local / mass
        position = np.einsum("n,ni->i", lw, self.positions)
        rotation = chordal_mean(self.rotations, lw)
        correction = corrections_to(probe_position, probe_rotation, position[None], rotation[None])[0]
        # How unsure the belief is about this pose: every particle's distance from it, not only the
        # mode's (the kernel would cap the spread at its own width).
        spread = np.sqrt(np.einsum("n,ni->i", w, (pred - correction) ** 2))
        self._mode = (position, rotation)
        return Estimate(position, rotation, correction, spread, min(1.0, mass))


def pose_jump(
    previous: tuple[float, np.ndarray, np.ndarray] | None,
    now: float,
    position: np.ndarray,
    rotation: np.ndarray,
    max_speed_mm_s: float = 250.0,
    max_turn_deg_s: float = 250.0,
    min_jump_mm: float = 15.0,
    min_jump_deg: float = 15.0,
) -> str | None:
    """Why a tracked pose is not a hand's motion from the previous one (a patient who moved, a bumped
    camera, a bad calibration), or None. A hand moves a probe at most ~0.25 m/s while scanning."""
    if previous is None:
        return None
    t0, p0, r0 = previous
    dt = max(now - t0, 1e-3)
    moved, turned = pose_distance(p0, r0, position, rotation)
    if moved >= min_jump_mm and moved / dt > max_speed_mm_s:
        return f"the tracked probe jumped {moved:.0f} mm in {dt:.2f} s (patient moved or camera bumped?)"
    if turned >= min_jump_deg and turned / dt > max_turn_deg_s:
        return f"the tracked probe turned {turned:.0f}° in {dt:.2f} s (patient moved or camera bumped?)"
    return None


def confidence_of(estimate: Estimate) -> float:
    """0–1 trust in the belief's correction: its mode's mass, shrunk as its spread grows."""
    s = float(np.max(estimate.spread / MODE_SCALE))
    return float(np.clip(estimate.mass, 0.0, 1.0) * math.exp(-0.5 * s * s))
