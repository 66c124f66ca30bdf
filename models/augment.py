"""Training augmentations (pure numpy/scipy) that make the model hold on B-mode images from other
scanners, not only from this simulator.

What the gain head may legitimately learn: on a log-compressed display a gain change of G dB moves
every unsaturated grey level by ``G · 255 / DR``; the best gain puts the tissue's median grey at the
display's reference grey (``sim.truth.TARGET_GREY``). So

- a brightness offset *is* a gain change: :func:`shift_gain` shifts grey levels and moves the label
  by the same number of dB (it never changes brightness without telling the label);
- grey maps, dynamic range, speckle, blur, noise, masks, screen margins, a screen grab's black
  surround and burned-in overlays change the look but keep the reference grey where it was
  (:func:`grey_map` and :func:`dynamic_range` are anchored there), so the label stays: they teach the
  head to read *where the tissue sits relative to the reference grey* however the scanner draws it, not
  the simulator's exact grey statistics.

Every function takes a float32 (H, W) image in grey levels 0..255 and a numpy Generator.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import gaussian_filter

from models.imageprep import resize
from sim.truth import TARGET_GREY

MID_GREY = TARGET_GREY  # the grey level the best gain puts tissue at
SIM_DYNAMIC_RANGE_DB = 60.0


def shift_gain(
    img: np.ndarray, delta_db: float, dynamic_range_db: float = SIM_DYNAMIC_RANGE_DB
) -> np.ndarray:
    """The image as a gain ``delta_db`` higher would show it (label: gain error + delta_db).
    Pixels outside the image field (exact 0) stay black."""
    out = np.clip(img + delta_db * 255.0 / dynamic_range_db, 0.0, 255.0)
    out[img <= 0] = 0.0
    return out.astype(np.float32)


_GREYS = np.arange(256, dtype=np.float32)


def grey_map(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A different display curve: separate gammas below and above mid-grey, mid-grey fixed."""
    g_lo, g_hi = rng.uniform(0.7, 1.4, 2)
    lo = MID_GREY * np.power(np.clip(_GREYS, 0, MID_GREY) / MID_GREY, g_lo)
    hi = 255.0 - (255.0 - MID_GREY) * np.power(
        (255.0 - np.clip(_GREYS, MID_GREY, 255)) / (255.0 - MID_GREY), g_hi
    )
    curve = np.where(_GREYS < MID_GREY, lo, hi).astype(np.float32)
    # Tabulated at the 256 grey levels and interpolated: the same curve for a fraction of the work.
    x = np.clip(img, 0.0, 255.0)
    i = np.minimum(x.astype(np.intp), 254)
    return (curve[i] + (x - i) * (curve[i + 1] - curve[i])).astype(np.float32)


def dynamic_range(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another dynamic range (contrast about mid-grey); the black outside the field stays black."""
    s = float(rng.uniform(0.7, 1.35))
    out = np.clip(MID_GREY + (img - MID_GREY) * s, 0.0, 255.0)
    out[img <= 0] = 0.0
    return out.astype(np.float32)


def speckle_size(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coarser speckle (down- then up-sampled) or finer extra grain (log-Rayleigh texture)."""
    h, w = img.shape
    if rng.uniform() < 0.5:
        k = float(rng.uniform(1.3, 2.2))
        small = resize(img, max(2, round(h / k)), max(2, round(w / k)))
        return np.clip(resize(small, h, w), 0, 255).astype(np.float32)
    ray = np.sqrt(-2.0 * np.log(rng.uniform(1e-6, 1.0, img.shape)))
    grain = 20 * np.log10(ray / np.sqrt(np.pi / 2))  # zero-mean-ish log speckle, about 5.6 dB spread
    amp = float(rng.uniform(0.3, 1.0)) * 255.0 / SIM_DYNAMIC_RANGE_DB
    out = np.where(img > 0, np.clip(img + amp * gaussian_filter(grain, 0.6) * 1.5, 0, 255), 0.0)
    return out.astype(np.float32)


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.4, 1.6, 2)
    return gaussian_filter(img, sigma).astype(np.float32)


def noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sd = float(rng.uniform(2.0, 10.0))
    return np.clip(img + rng.normal(0.0, sd, img.shape), 0, 255).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def sector_mask(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black outside a sector (apex above the image) and below a curved bottom edge, as scanners draw."""
    h, w = img.shape
    apex_y = -float(rng.uniform(0.05, 1.5)) * h
    half = np.radians(rng.uniform(35.0, 75.0))
    yy, xx = _pixel_grid(h, w)
    dx, dy = xx - (w - 1) / 2 + rng.uniform(-0.05, 0.05) * w, yy - apex_y
    inside = np.abs(np.arctan2(dx, dy)) <= half
    inside &= np.hypot(dx, dy) <= (h - apex_y) * rng.uniform(1.0, 1.1)
    return np.where(inside, img, 0.0).astype(np.float32)


def screen_margins(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black margins at the sides, as a screen grab shows a linear probe's rectangle inside a wider
    screen (the margins then carry its text). Masked, not squeezed: the mm per pixel stay as labelled."""
    w = img.shape[1]
    left, right = (rng.uniform(0.03, 0.2, 2) * w).astype(int)
    out = img.copy()
    out[:, :left] = 0.0
    out[:, w - right :] = 0.0
    return out


# 3×5 glyphs of digits and a few letters: burned-in annotations are short strings of these.
_GLYPHS = np.array(
    [
        [7, 5, 5, 5, 7],
        [2, 6, 2, 2, 7],
        [7, 1, 7, 4, 7],
        [7, 1, 7, 1, 7],
        [5, 5, 7, 1, 1],
        [7, 4, 7, 1, 7],
        [7, 4, 7, 5, 7],
        [7, 1, 1, 2, 2],
        [7, 5, 7, 5, 7],
        [7, 5, 7, 1, 7],
        [7, 5, 7, 5, 5],  # A
        [6, 5, 6, 5, 6],  # B
        [5, 7, 7, 5, 5],  # M
        [7, 4, 6, 4, 4],  # F
    ],
    dtype=np.uint8,
)


@functools.lru_cache(maxsize=64)
def _glyph_bitmap(index: int, scale: int) -> np.ndarray:
    rows = _GLYPHS[index]
    bits = ((rows[:, None] >> np.array([2, 1, 0])) & 1).astype(bool)
    return np.kron(bits, np.ones((scale, scale), bool))


def burn_in(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Text in the corners, caliper crosses with a dotted line, a depth scale: bright overlay pixels."""
    h, w = img.shape
    out = img.copy()
    level = float(rng.uniform(170, 255))
    for _ in range(int(rng.integers(1, 4))):  # strings of text
        scale = int(rng.integers(1, 3))
        n = int(rng.integers(2, 7))
        y = int(rng.choice([rng.integers(0, 8), rng.integers(h - 12, h - 5 * scale)]))
        x = int(rng.integers(0, max(1, w - n * 4 * scale)))
        for k in range(n):
            g = _glyph_bitmap(int(rng.integers(len(_GLYPHS))), scale)
            ys, xs = y, x + k * 4 * scale
            region = out[ys : ys + g.shape[0], xs : xs + g.shape[1]]
            region[g[: region.shape[0], : region.shape[1]]] = level
    if rng.uniform() < 0.6:  # calipers: two crosses and a dotted line between them
        p = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w], (2, 2)).astype(int)
        for y, x in p:
            out[max(0, y - 3) : y + 4, x] = level
            out[y, max(0, x - 3) : x + 4] = level
        for t in np.linspace(0, 1, 12)[1:-1]:
            y, x = (p[0] * (1 - t) + p[1] * t).astype(int)
            out[y, x] = level
    if rng.uniform() < 0.5:  # depth scale ticks on one side
        x = int(rng.choice([1, w - 2]))
        out[:: max(4, h // int(rng.integers(5, 12))), x - 1 : x + 1] = level
    return out


def screen_grab(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The field shrunk into a larger black screen, as a screen capture shows it (or a DICOM frame whose
    tissue region is the whole display): black above the apex, beside and below the field, an ECG trace
    under it. Rows no longer span the imaging depth, so the frame teaches the brightness, contact and
    view heads only (see :data:`MOVES_GEOMETRY`)."""
    h, w = img.shape
    fh, fw = int(h * rng.uniform(0.55, 0.92)), int(w * rng.uniform(0.55, 0.95))
    top, left = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
    out = np.zeros_like(img)
    out[top : top + fh, left : left + fw] = resize(img, fh, fw)
    below = h - (top + fh)
    if below >= 8 and rng.uniform() < 0.5:  # an ECG trace: a baseline with a spike per beat
        x = np.arange(int(rng.integers(w // 3, w)))
        beat = int(rng.integers(12, 40))
        y = np.where(x % beat < 2, -float(rng.uniform(2, below - 3)), rng.normal(0, 0.5, x.size))
        out[np.clip(h - 2 + y.astype(int), top + fh, h - 1), x] = float(rng.uniform(150, 255))
    return np.clip(out, 0.0, 255.0).astype(np.float32)


# Augmentations after which the rows no longer span the imaging depth nor the columns the probe's
# width: the depth and pose labels do not hold for their frames.
MOVES_GEOMETRY = frozenset({screen_grab})

# (function, probability) in the order they are applied.
PIPELINE = (
    (speckle_size, 0.3),
    (blur, 0.3),
    (grey_map, 0.4),
    (dynamic_range, 0.4),
    (noise, 0.3),
    (sector_mask, 0.2),
    (screen_margins, 0.15),
    (screen_grab, 0.08),
    (burn_in, 0.35),
)


def augment(
    img: np.ndarray, rng: np.random.Generator, gain_shift_p: float = 0.3
) -> tuple[np.ndarray, float, bool]:
    """One random augmentation of a uint8 frame: (float32 image 0..255, dB to add to the gain label,
    whether the frame's geometry still matches its depth and pose labels)."""
    out = img.astype(np.float32)
    delta = 0.0
    geometry_kept = True
    if rng.uniform() < gain_shift_p:
        delta = float(rng.uniform(-10.0, 10.0))
        out = shift_gain(out, delta)
    for fn, p in PIPELINE:
        if rng.uniform() < p:
            out = fn(out, rng)
            geometry_kept &= fn not in MOVES_GEOMETRY
    return out, delta, geometry_kept
