"""The simulated scanner: renders B-mode frames of a phantom for a probe pose and imaging settings.

Per frame: beam-grid sample points (probe frame, cached per depth) go to patient space; tissue
labels; complex scatterer amplitudes from a hash of the patient-space cell (fixed in the phantom)
scaled by echogenicity and organ texture; specular echoes at boundaries; two-way frequency-dependent
attenuation integrated along each beam; separable PSF (axial pulse, lateral beam width varying with
depth and focus); receiver noise; envelope; depth gain (built-in + TGC) and overall gain; log
compression over the dynamic range; scan conversion to the display.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import correlate1d

from sim import physics
from sim.geometry import BeamGrid, ScanConversion, beam_grid, block_for_box, scan_conversion
from sim.phantom import Phantom
from sim.tissues import ANECHOIC, LABEL
from sim.types import ImagingSettings, Pose

# Contact: a beam images tissue while the face at its element is at most this far above the skin
# (soft tissue and gel conform to a pressed probe) and the beam points into the body.
CONTACT_GAP_MM = 3.0
CONTACT_MAX_ANGLE_DEG = 70.0
# Fraction of a press (face below the undeformed skin) that moves the underlying tissue down.
PRESS_TRANSFER = 0.3
_LATERAL_BANDS = 16
_TEXTURE_BITS = 12
_NOISE_TABLE = 1 << 18


@dataclass(frozen=True)
class Stages:
    """Intermediate results of one frame, on the beam grid (rows = samples along the beams)."""

    labels: np.ndarray  # (n_samples, n_beams) uint8
    contact: np.ndarray  # (n_beams,) bool
    attenuation: np.ndarray  # (n_samples, n_beams) two-way amplitude factor
    envelope: np.ndarray  # (n_samples, n_beams) pre-log envelope incl. noise, no gain / TGC
    depth_gain_db: np.ndarray  # (n_samples,) built-in compensation + TGC
    grey: np.ndarray  # (n_samples, n_beams) float grey before clipping (gain applied)
    image: np.ndarray  # (H, W) uint8 display
    sample_depth_mm: np.ndarray  # (n_samples,) distance from the face along each beam


@dataclass(frozen=True)
class _SettingsCache:
    grid: BeamGrid
    conversion: ScanConversion
    axial_kernel: np.ndarray
    lateral_bands: tuple[tuple[int, int, np.ndarray], ...]  # (row start, row stop, kernel)
    depth_gain: np.ndarray
    noise_scale: np.ndarray  # (n_samples,) keeps the receiver noise's power through the PSF


class Scanner:
    """Renders frames of one phantom. Deterministic for (phantom seed, pose, settings, frame_index)."""

    def __init__(
        self,
        phantom: Phantom,
        size: tuple[int, int] = (256, 256),
        n_samples: int | None = None,
        noise_db: float = physics.NOISE_DB,
    ) -> None:
        """``noise_db``: the receiver's noise floor (before any gain) relative to liver backscatter at
        the face; scanners and probes differ in it."""
        if size[0] < 8 or size[1] < 8:
            raise ValueError(f"image size {size} too small (at least 8x8)")
        self.phantom = phantom
        self.preset = phantom.preset
        self.probe = phantom.preset.probe
        self.size = (int(size[0]), int(size[1]))
        self.n_samples = int(n_samples or max(256, self.size[0]))
        self._scatter, texture = physics.gaussian_table(phantom.seed)
        # Per label and coarse texture cell: echogenicity × exp(σg − σ²) (keeps the mean power).
        g = texture[: 1 << _TEXTURE_BITS][None, :]
        sig = phantom.texture[:, None]
        self._strength = (phantom.echo_amp[:, None] * np.exp(sig * g - sig * sig)).astype(np.float32).ravel()
        rng = np.random.default_rng([phantom.seed, 0x0015E])
        self._noise_amp = np.float32(10.0 ** (noise_db / 20.0))
        noise = rng.standard_normal((2, _NOISE_TABLE)) / np.sqrt(2.0) * float(self._noise_amp)
        self._noise = (noise[0] + 1j * noise[1]).astype(np.complex64)
        self._cache = lru_cache(maxsize=16)(self._build_cache)

    # --- per-settings precomputation -----------------------------------------------------------
    def _build_cache(
        self, depth_mm: float, freq_mhz: float, tgc_db: tuple[float, float, float]
    ) -> _SettingsCache:
        grid = beam_grid(self.probe, depth_mm, self.n_samples)
        conversion = scan_conversion(self.probe, grid, self.size)
        s = (np.arange(grid.n_samples) + 0.5) * grid.sample_mm
        axial = physics.gaussian_kernel(physics.axial_fwhm_mm(freq_mhz, self.probe) / 2.355 / grid.sample_mm)
        focus = 0.5 * depth_mm
        fwhm = physics.lateral_fwhm_mm(freq_mhz, self.probe, s, focus)
        # Capped: near a phased array's apex the beams crowd together and the (display-sized) blur saturates.
        sigma_beams = np.minimum(fwhm / 2.355 / grid.lateral_spacing_mm, 6.0)
        bands = []
        edges = np.linspace(0, grid.n_samples, _LATERAL_BANDS + 1).astype(int)
        for a, b in itertools.pairwise(edges):
            bands.append((int(a), int(b), physics.gaussian_kernel(float(np.mean(sigma_beams[a:b])))))
        depth_gain = physics.depth_gain_db(s, depth_mm, freq_mhz, tgc_db)
        # White noise through the PSF keeps sum(kernel²) of its power: scale it up by the inverse first.
        # (gaussian_kernel has unit L2 norm, so this is 1 within float32 rounding today.)
        noise_scale = np.empty(grid.n_samples, np.float32)
        for a, b, kernel in bands:
            noise_scale[a:b] = 1.0 / np.sqrt(float(np.sum(axial**2)) * float(np.sum(kernel**2)))
        return _SettingsCache(grid, conversion, axial, tuple(bands), depth_gain, noise_scale)

    def _settings_cache(self, settings: ImagingSettings) -> _SettingsCache:
        if not (settings.depth_mm > 0 and settings.freq_mhz > 0):
            raise ValueError(f"depth_mm and freq_mhz must be positive, got {settings}")
        tgc = tuple(float(v) for v in settings.tgc_db)
        if len(tgc) != 3:
            raise ValueError(f"tgc_db needs 3 values (near, mid, far), got {settings.tgc_db!r}")
        return self._cache(float(settings.depth_mm), float(settings.freq_mhz), tgc)

    # --- geometry shared with ground truth -----------------------------------------------------
    def face_gaps(self, pose: Pose, grid: BeamGrid) -> tuple[np.ndarray, np.ndarray]:
        """Per beam: the skin's height above the face at its element (mm; > 0 means the face is lifted
        there) and whether the beam images tissue (contact): the gap is at most CONTACT_GAP_MM plus the
        face's own curvature (soft tissue and gel conform to a pressed probe) and the beam points into
        the body. Lifted or tilted-off probes give no tissue signal."""
        ph = self.phantom
        if self.probe.kind == "phased":
            # One small face for all beams: in contact when most of its footprint is.
            a, e = self.probe.aperture_mm / 2, self.probe.elevation_mm / 4
            foot = np.array([[-a, 0, 0], [a, 0, 0], [0, -e, 0], [0, e, 0], [0, 0, 0]], dtype=float)
            fp = pose.to_points(foot)
            gap_foot = fp[:, 2] - ph.surface_z(fp[:, 0], fp[:, 1])
            touching = np.mean(-gap_foot <= CONTACT_GAP_MM) >= 0.6
            ok = np.full(grid.n_beams, bool(touching))
            depth = np.full(grid.n_beams, float(gap_foot[-1]))
        else:
            fp = pose.to_points(grid.origins)
            depth = fp[:, 2] - ph.surface_z(fp[:, 0], fp[:, 1])  # face depth below the skin
            ok = -depth <= CONTACT_GAP_MM + grid.face_sag_mm
        r = pose.rotation_matrix()
        beam_dirs = grid.directions @ r.T
        centre = pose.position_mm
        normal = ph.surface_normal(float(centre[0]), float(centre[1]))
        ok &= beam_dirs @ normal > np.cos(np.radians(CONTACT_MAX_ANGLE_DEG))
        return -depth, np.asarray(ok, dtype=bool)

    def beam_contact(self, pose: Pose, grid: BeamGrid) -> np.ndarray:
        return self.face_gaps(pose, grid)[1]

    def _labels(self, pose: Pose, grid: BeamGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ph = self.phantom
        rot = pose.rotation_matrix()
        # Sample = beam origin + distance along the beam, both mapped to patient space (broadcast,
        # cheaper than a matrix product over all samples).
        rot32 = rot.astype(np.float32)
        starts = grid.origins.astype(np.float32) @ rot32.T + pose.position_mm.astype(np.float32)
        dirs = grid.directions.astype(np.float32) @ rot32.T
        dist = ((np.arange(grid.n_samples, dtype=np.float32) + 0.5) * np.float32(grid.sample_mm))[
            :, None, None
        ]
        pts = (starts[None, :, :] + dist * dirs[None, :, :]).reshape(-1, 3)
        gap, contact = self.face_gaps(pose, grid)
        # Tissue deforms to meet the face: where the face stands off the skin the tissue follows it
        # up; where it presses in, part of the push compresses the layers and part moves tissue down.
        shift = np.where(gap > 0, gap, PRESS_TRANSFER * gap) * contact
        pts3 = pts.reshape(grid.n_samples, grid.n_beams, 3)
        pts3[:, :, 2] += shift[None, :].astype(np.float32)
        conform = np.broadcast_to(contact[None, :], (grid.n_samples, grid.n_beams)).reshape(-1)
        flat, depth = ph.layer_labels(pts, conform)
        labels = flat.reshape(grid.n_samples, grid.n_beams)
        below_skin = (depth >= ph.skin_mm).reshape(labels.shape)
        # Paint structures only over the beam-grid block their section by the image plane can touch.
        for shape, label in ph.structures:
            box = shape.plane_box(rot, pose.position_mm)
            if box is None:
                continue
            s0, s1, b0, b1 = block_for_box(self.probe, grid, box)
            if s0 >= s1 or b0 >= b1:
                continue
            inside = shape.contains(pts3[s0:s1, b0:b1].reshape(-1, 3)).reshape(s1 - s0, b1 - b0)
            labels[s0:s1, b0:b1][inside & below_skin[s0:s1, b0:b1]] = label
        labels[:, ~contact] = LABEL["outside"]
        return pts, labels, contact

    def _attenuation(self, labels: np.ndarray, freq_mhz: float, grid: BeamGrid) -> np.ndarray:
        alpha = self.phantom.atten[labels] * np.float32(freq_mhz)
        return physics.round_trip_attenuation(alpha, grid.sample_mm)

    def expected_power(
        self, pose: Pose, settings: ImagingSettings
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free mean echo power per beam-grid sample (speckle averaged out), the labels and the
        depth gain: what ground truth uses to define the best gain."""
        cache = self._settings_cache(settings)
        _, labels, _ = self._labels(pose, cache.grid)
        amp = self.phantom.echo_amp[labels] * self._attenuation(labels, settings.freq_mhz, cache.grid)
        return amp * amp + self._noise_amp**2, labels, cache.depth_gain

    # --- rendering -----------------------------------------------------------------------------
    def render_stages(self, pose: Pose, settings: ImagingSettings, frame_index: int = 0) -> Stages:
        cache = self._settings_cache(settings)
        grid = cache.grid
        ph = self.phantom
        pts, labels, contact = self._labels(pose, grid)
        flat_labels = labels.reshape(-1)

        # Fixed scatterer field: complex Gaussian amplitude per patient-space cell.
        idx = physics.cell_hash(pts, self.preset.scatterer_cell_mm, ph.seed)
        # Organ texture: coarse cells (2 mm), so a half-resolution lookup repeated 2x2 is enough.
        ns2, nb2 = (grid.n_samples + 1) // 2, (grid.n_beams + 1) // 2
        coarse = pts.reshape(grid.n_samples, grid.n_beams, 3)[::2, ::2].reshape(-1, 3)
        tex = physics.cell_hash(coarse, physics.TEXTURE_CELL_MM, ph.seed + 7919, _TEXTURE_BITS).reshape(
            ns2, 1, nb2, 1
        )
        tex = np.broadcast_to(tex, (ns2, 2, nb2, 2)).reshape(2 * ns2, 2 * nb2)[
            : grid.n_samples, : grid.n_beams
        ]
        strength = self._strength[flat_labels.astype(np.intp) * (1 << _TEXTURE_BITS) + tex.ravel()]
        field = (self._scatter[idx] * strength).reshape(grid.n_samples, grid.n_beams)  # complex64

        # Specular echoes where the tissue changes along a beam (impedance mismatch).
        z = ph.impedance[labels]
        refl = np.zeros_like(z)
        refl[1:] = np.abs(z[1:] - z[:-1]) / (z[1:] + z[:-1])
        refl[:, ~contact] = 0.0
        boundary = refl > 1e-3
        if np.any(boundary):
            refl[boundary] *= physics.specular_incidence(z, grid.sample_mm, grid.lateral_spacing_mm)[boundary]
            phase = self._scatter[idx.reshape(labels.shape)[boundary]]
            phase /= np.maximum(np.abs(phase), np.float32(1e-6))
            field[boundary] += phase * (physics.SPECULAR_GAIN * refl[boundary])

        atten = self._attenuation(labels, settings.freq_mhz, grid)
        field *= atten
        if not contact.all():
            field[:, ~contact] += physics.ring_down(grid.sample_mm, grid.n_samples)[:, None]

        # Receiver noise (fixed level, different for every frame). It passes the same receive filter
        # and beamformer as the echoes, so it is blurred across beams by the beam width as a real
        # scanner's noise is (the axial pulse is shorter than a grid sample at most depths).
        n = grid.n_samples * grid.n_beams
        start = int(
            physics.cell_hash(np.array([[frame_index, ph.seed, 17]], dtype=np.float32), 1.0, 99, 30)[0]
        )
        start %= _NOISE_TABLE - n
        field += (
            self._noise[start : start + n].reshape(grid.n_samples, grid.n_beams) * cache.noise_scale[:, None]
        )

        # Point-spread function: axial pulse, then lateral beam width band by band (on the I/Q pairs).
        iq = field.view(np.float32).reshape(grid.n_samples, grid.n_beams, 2)
        if len(cache.axial_kernel) > 1:
            iq = correlate1d(iq, cache.axial_kernel, axis=0, mode="constant")
        for a, b, kernel in cache.lateral_bands:
            if len(kernel) > 1:
                iq[a:b] = correlate1d(iq[a:b], kernel, axis=1, mode="constant")
        field = iq.reshape(grid.n_samples, 2 * grid.n_beams).view(np.complex64)
        envelope = np.abs(field)

        gain = cache.depth_gain[:, None] + np.float32(settings.gain_db)
        grey = physics.log_compress(envelope, gain, self.preset.dynamic_range_db)
        image = physics.grey_map(cache.conversion.apply(grey))
        s = (np.arange(grid.n_samples) + 0.5) * grid.sample_mm
        return Stages(labels, contact, atten, envelope, cache.depth_gain, grey, image, s)

    def render(self, pose: Pose, settings: ImagingSettings, frame_index: int = 0) -> np.ndarray:
        """The B-mode frame, uint8 (H, W): rows = depth 0..settings.depth_mm, columns = lateral."""
        return self.render_stages(pose, settings, frame_index).image

    def render_envelope(self, pose: Pose, settings: ImagingSettings, frame_index: int = 0) -> np.ndarray:
        """Pre-log envelope on the beam grid (no gain, no TGC), for physics checks."""
        return self.render_stages(pose, settings, frame_index).envelope

    def labels(self, pose: Pose, settings: ImagingSettings) -> np.ndarray:
        """The tissue label of every beam-grid sample (rows = depth): the anatomy the frame shows."""
        return self._labels(pose, self._settings_cache(settings).grid)[1]

    def grid(self, settings: ImagingSettings) -> BeamGrid:
        return self._settings_cache(settings).grid

    def to_display(self, grid_values: np.ndarray, settings: ImagingSettings) -> np.ndarray:
        """Scan-convert any beam-grid map (e.g. labels as float) to display pixels."""
        return self._settings_cache(settings).conversion.apply(grid_values.astype(np.float32))


def is_anechoic(label: int) -> bool:
    return label in ANECHOIC
