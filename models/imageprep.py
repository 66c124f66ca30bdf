"""Still images in, model-ready arrays out: PNG / .npy reading (no pillow needed), resizing, grey.

The PNG reader covers what scanners and screenshots export: non-interlaced, bit depth 8 (grey,
grey+alpha, RGB, RGBA, palette) or 16 (grey, RGB, with or without alpha). Colour becomes grey
(ITU-R 601 luma); alpha is ignored.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and the problem."""


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    pos = 0
    for y in range(height):
        if pos + 1 + stride > len(raw):
            raise ImageError(f"{path}: PNG image data is truncated")
        ftype = raw[pos]
        line = np.frombuffer(raw, np.uint8, stride, pos + 1).astype(np.int32)
        pos += 1 + stride
        if ftype == 0:
            cur = line
        elif ftype == 2:  # Up
            cur = (line + prev) & 0xFF
        elif ftype == 1:  # Sub: running sum per byte lane
            lanes = np.zeros(((stride + bpp - 1) // bpp) * bpp, np.int32)
            lanes[:stride] = line
            cur = (np.cumsum(lanes.reshape(-1, bpp), axis=0).reshape(-1)[:stride]) & 0xFF
        elif ftype in (3, 4):  # Average, Paeth: sequential along the row
            cur_list = [0] * stride
            up = prev.tolist()
            lst = line.tolist()
            for i in range(stride):
                a = cur_list[i - bpp] if i >= bpp else 0
                b = up[i]
                if ftype == 3:
                    cur_list[i] = (lst[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur_list[i] = (lst[i] + pred) & 0xFF
            cur = np.array(cur_list, np.int32)
        else:
            raise ImageError(f"{path}: PNG row {y} has an unknown filter type {ftype}")
        out[y] = cur
        prev = cur
    return out


def read_png(path: Path) -> np.ndarray:
    """An 8-bit grey (H, W) array from a PNG file."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError(f"{path}: not a PNG file")
    pos, header, idat, palette = 8, None, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if len(chunk) != length:
            raise ImageError(f"{path}: PNG chunk {kind!r} is truncated")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"PLTE":
            palette = np.frombuffer(chunk, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ImageError(f"{path}: PNG has no image header or no image data")
    width, height, depth, ctype, _, _, interlace = header
    if interlace:
        raise ImageError(f"{path}: interlaced PNGs are not supported; save it without interlacing")
    if ctype not in _CHANNELS or depth not in (8, 16) or (ctype == 3 and depth != 8):
        raise ImageError(f"{path}: PNG colour type {ctype} at bit depth {depth} is not supported")
    if width == 0 or height == 0:
        raise ImageError(f"{path}: PNG image is empty ({width}x{height})")
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ImageError(f"{path}: PNG image data is corrupt ({exc})") from None
    rows = _unfilter(raw, height, width * bpp, bpp, path)
    if depth == 16:
        pix = rows.reshape(height, width, channels, 2)[..., 0]  # the high byte of each big-endian sample
    else:
        pix = rows.reshape(height, width, channels)
    if ctype == 3:
        if palette is None:
            raise ImageError(f"{path}: palette PNG without a palette")
        pix = palette[np.minimum(pix[..., 0], len(palette) - 1)]
        channels = 3
    return to_grey(pix if channels > 1 else pix[..., 0], path)


def to_grey(pixels: np.ndarray, path: Path | str = "image") -> np.ndarray:
    """uint8 (H, W) from (H, W), (H, W, 1|2) grey(+alpha) or (H, W, 3|4) colour(+alpha)."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] in (1, 2):
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    if a.ndim != 2 or a.size == 0:
        raise ImageError(f"{path}: expected a 2-D grey image, got shape {np.asarray(pixels).shape}")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ImageError(f"{path}: image has NaN or infinite values")
        if a.min() < 0 or a.max() > 255:
            raise ImageError(f"{path}: grey levels must lie in 0..255, got {a.min():g}..{a.max():g}")
        a = np.rint(a).astype(np.uint8)
    return a


def read_image(path: Path | str) -> np.ndarray:
    """uint8 grey (H, W) from a PNG or a .npy file (grey levels 0..255)."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ImageError(f"{p}: not a readable .npy array ({exc})") from None
        if arr.dtype.kind not in "uif":
            raise ImageError(f"{p}: .npy array has non-numeric dtype {arr.dtype}")
        return to_grey(arr, p)
    with p.open("rb") as f:
        head = f.read(8)
    if head == PNG_SIGNATURE:
        return read_png(p)
    raise ImageError(f"{p}: unsupported image format (give an 8-bit PNG or a .npy array)")


@functools.lru_cache(maxsize=256)
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: box (area) average when shrinking, linear interpolation when growing.

    Cached: the daemon resizes every frame of one probe geometry, so the weights are built once;
    training augmentations resize to a few dozen sizes.
    """
    w = np.zeros((n_out, n_in))
    scale = n_in / n_out
    if scale >= 1.0:
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
                w[i, j] = min(hi, j + 1) - max(lo, j)
    else:
        centres = (np.arange(n_out) + 0.5) * scale - 0.5
        for i, c in enumerate(np.clip(centres, 0, n_in - 1)):
            j = min(int(np.floor(c)), n_in - 2) if n_in > 1 else 0
            t = c - j
            w[i, j] += 1 - t
            if n_in > 1:
                w[i, j + 1] += t
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    w.setflags(write=False)
    return w


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (height, width) grey levels from any-size (H, W) image."""
    img = np.asarray(image)
    if img.shape == (height, width):
        return img.astype(np.float32)
    h, w = img.shape
    if h % height == 0 and w % width == 0:  # whole-number shrink: the area average is a block mean
        fy, fx = h // height, w // width
        x = img.astype(np.float32)
        out = np.zeros((height, width), np.float32)
        for dy in range(fy):  # strided slice sums: far faster than a mean over reshaped axes
            for dx in range(fx):
                out += x[dy::fy, dx::fx]
        out *= np.float32(1.0 / (fy * fx))
        return out
    return _resample_matrix(h, height) @ img.astype(np.float32) @ _resample_matrix(w, width).T
