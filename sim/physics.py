"""Pure functions of B-mode image formation: scatterer field, PSF, attenuation, gain and display.

Amplitudes are linear with liver backscatter at the probe face = 1 (0 dB); speckle is a complex
Gaussian field, so its envelope is Rayleigh distributed. All arrays float32.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from sim.presets import ProbeGeometry

SOUND_SPEED_MM_US = 1.54
# Receiver (electronic) noise, before any gain, relative to liver backscatter at the face.
NOISE_DB = -72.0
# Specular echo amplitude per unit of boundary reflection coefficient.
SPECULAR_GAIN = 40.0
# The scanner's built-in depth compensation (what neutral TGC sliders give), dB/cm/MHz one way.
NOMINAL_ATTEN_DB_CM_MHZ = 0.5
# The receiver's depth-gain range: compensation stops growing past this (deep fields go dark).
MAX_DEPTH_GAIN_DB = 55.0
# Display level (dB, after gain) that maps to grey 0. Set so that the best gain (tissue at
# sim.truth.TARGET_GREY) stays mid-range on the presets' 0-60 dB dials.
BLACK_LEVEL_DB = 4.0
# Probe in air: the lens face reflects nearly all of the pulse, which rings down inside the lens as
# echoes parallel to the face, each RING_DECAY_DB weaker (the bands every probe shows in air). Spacing
# in tissue-equivalent depth (a real L12-5: 2.6 mm); the first echo as a specular echo off a total
# reflector (reflection coefficient 1).
RING_AMP = 1.0 * SPECULAR_GAIN
RING_SPACING_MM = 2.0
RING_DECAY_DB = 12.0
# Coarse texture cell edge (mm): the grain of organ parenchyma above the speckle scale.
TEXTURE_CELL_MM = 2.0

_TABLE_BITS = 18


def gaussian_table(seed: int, n: int = 1 << _TABLE_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Unit-power complex Gaussians (complex64) and unit real Gaussians (float32)."""
    rng = np.random.default_rng([seed, 0x5CA7])
    pair = rng.standard_normal((2, n)) / np.sqrt(2.0)
    cplx = (pair[0] + 1j * pair[1]).astype(np.complex64)
    real = rng.standard_normal(n).astype(np.float32)
    return cplx, real


def cell_hash(points: np.ndarray, cell_mm: float, seed: int, bits: int = _TABLE_BITS) -> np.ndarray:
    """Index in [0, 2**bits) from the integer cell of each patient-space point: a scatterer field that
    stays fixed in the phantom without storing a 3-D array."""
    cells = np.floor(points * np.float32(1.0 / cell_mm)).astype(np.int64).view(np.uint64)
    h = cells[:, 0] * np.uint64(0x9E3779B97F4A7C15)
    h ^= cells[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= cells[:, 2] * np.uint64(0x165667B19E3779F9)
    h ^= np.uint64(((seed & 0xFFFFFFFF) * 0x27D4EB2F165667C5) & 0xFFFFFFFFFFFFFFFF)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h >> np.uint64(64 - bits)).astype(np.intp)


def axial_fwhm_mm(freq_mhz: float, probe: ProbeGeometry) -> float:
    """Two-way pulse-echo axial resolution: half the spatial pulse length, c / (2 B f)."""
    return SOUND_SPEED_MM_US / (2.0 * probe.fractional_bandwidth * freq_mhz)


def lateral_fwhm_mm(freq_mhz: float, probe: ProbeGeometry, z_mm: np.ndarray, focus_mm: float) -> np.ndarray:
    """Two-way lateral beam width vs depth: dynamic receive focus at constant F-number (limited by the
    active aperture) combined with a fixed transmit focus that widens away from ``focus_mm``."""
    lam = SOUND_SPEED_MM_US / freq_mhz
    aperture = probe.aperture_mm * (0.5 if probe.kind != "phased" else 1.0)
    z = np.maximum(np.asarray(z_mm, dtype=float), 1.0)
    w_rx = lam * np.maximum(probe.f_number, z / aperture)
    f_tx = max(focus_mm / aperture, probe.f_number)
    w0 = lam * f_tx
    rayleigh = max(3.5 * lam * f_tx**2, 2.0)
    w_tx = w0 * np.sqrt(1.0 + ((z - focus_mm) / rayleigh) ** 2)
    return w_rx * w_tx / np.sqrt(w_rx**2 + w_tx**2) * np.sqrt(2.0)


def gaussian_kernel(sigma: float, max_half: int = 64) -> np.ndarray:
    """Gaussian kernel with unit L2 norm (preserves the mean power of white speckle)."""
    if sigma < 0.25:
        return np.ones(1, dtype=np.float32)
    half = int(min(max_half, np.ceil(3.0 * sigma)))
    t = np.arange(-half, half + 1, dtype=float)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / np.sqrt(np.sum(k * k))).astype(np.float32)


def round_trip_attenuation(alpha_db_cm: np.ndarray, sample_mm: float) -> np.ndarray:
    """Amplitude factor (n_samples, n_beams) after the two-way path from the face to each sample.

    ``alpha_db_cm`` is the one-way attenuation at each sample (dB/cm at the imaging frequency);
    the loss to a sample counts the tissue before it plus half of its own cell.
    """
    one_way = np.cumsum(alpha_db_cm, axis=0) * np.float32(sample_mm / 10.0)
    one_way -= alpha_db_cm * np.float32(0.5 * sample_mm / 10.0)
    return np.exp(one_way * np.float32(-np.log(10.0) / 10.0)).astype(np.float32)


def specular_incidence(impedance: np.ndarray, sample_mm: float, lateral_mm: np.ndarray) -> np.ndarray:
    """cos² of the angle between each boundary's normal and the beam, from the gradient of the
    (lightly smoothed) impedance map on the beam grid: specular echoes are strong only where the
    beam meets a surface square on."""
    smooth = uniform_filter(impedance, size=(3, 5), mode="nearest")
    g_ax = np.gradient(smooth, axis=0) / np.float32(sample_mm)
    g_lat = np.gradient(smooth, axis=1) / lateral_mm[:, None].astype(np.float32)
    return (g_ax * g_ax / np.maximum(g_ax * g_ax + g_lat * g_lat, np.float32(1e-12))).astype(np.float32)


def depth_gain_db(
    z_mm: np.ndarray, depth_mm: float, freq_mhz: float, tgc_db: tuple[float, float, float]
) -> np.ndarray:
    """Total depth-dependent gain (dB): built-in attenuation compensation plus the TGC sliders
    (near, mid, far) interpolated over the imaging depth."""
    builtin = np.minimum(
        2.0 * NOMINAL_ATTEN_DB_CM_MHZ * freq_mhz * np.asarray(z_mm) / 10.0, MAX_DEPTH_GAIN_DB
    )
    sliders = np.interp(np.asarray(z_mm) / depth_mm, [0.0, 0.5, 1.0], list(tgc_db))
    return (builtin + sliders).astype(np.float32)


def ring_down(sample_mm: float, n_samples: int) -> np.ndarray:
    """Envelope (n_samples,) of the lens ring-down on a beam with no tissue under it: echoes every
    RING_SPACING_MM, fading by RING_DECAY_DB each, until they are below the receiver noise."""
    out = np.zeros(n_samples, np.float32)
    floor = 10.0 ** (NOISE_DB / 20.0)
    k = 1
    while True:
        amp = RING_AMP * 10.0 ** (-RING_DECAY_DB * k / 20.0)
        i = int(k * RING_SPACING_MM / sample_mm)
        if amp < floor or i >= n_samples:
            return out
        out[i] += np.float32(amp)
        k += 1


def log_compress(envelope: np.ndarray, gain_db: np.ndarray | float, dynamic_range_db: float) -> np.ndarray:
    """Grey level (float, unclipped) of an envelope: 20·log10, plus gain, mapped over the dynamic range
    onto 0..255. A +G dB gain change moves every unsaturated pixel by G·255/DR grey levels."""
    level = np.float32(20.0) * np.log10(np.maximum(envelope, np.float32(1e-12))) + gain_db
    return (level - np.float32(BLACK_LEVEL_DB)) * np.float32(255.0 / dynamic_range_db)


def grey_map(grey: np.ndarray) -> np.ndarray:
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)
