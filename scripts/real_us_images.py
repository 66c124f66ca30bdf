#!/usr/bin/env python3
"""Regenerate the real ultrasound test PNGs (real_*.png) from their source archives on PyPI.

Usage:
    pip download pydicom-data==1.0.0 --no-deps      # -> pydicom_data-1.0.0-py3-none-any.whl
    pip download deid-data==0.0.20 --no-deps        # -> deid-data-0.0.20.tar.gz (sdist; no wheel exists)
    python scripts/real_us_images.py pydicom_data-1.0.0-py3-none-any.whl deid-data-0.0.20.tar.gz [OUTDIR]

The two archives may be given in either order (each is recognised by its file name); OUTDIR
defaults to tests/data/real_us. The archives are read in place, nothing is unpacked to disk.

Needs: pydicom (3.x), numpy, Pillow, and pylibjpeg + pylibjpeg-libjpeg (decoder for the two
JPEG-compressed files: JPEG Lossless SV1 for the EPIQ file, JPEG Baseline for the SonoSite file).
The decoder is pinned to pylibjpeg so the decoded pixels do not depend on which plugins happen
to be installed (Pillow's JPEG decoder gives baseline RGB values that differ by up to 5).

What it does for each image: decode frame 0, palette -> RGB (16-bit LUT / 257) where needed,
RGB -> grey Y = 0.299 R + 0.587 G + 0.114 B rounded half-to-even (numpy rint), crop to the
inclusive box of the tissue region (RegionDataType 1) in SequenceOfUltrasoundRegions
(0018,6011): rows MinY0..MaxY1, columns MinX0..MaxX1, and save an 8-bit grey PNG with
Pillow optimize=True. No resampling.

Checks: the archives' and source files' SHA-256 (warn if different), the SHA-256 of the decoded
crop's raw pixel bytes (must match: exit status 1 if not), and the SHA-256 of the PNG file
(byte identity also depends on the zlib/Pillow build; made with Pillow 13.0.0 / zlib 1.2.13,
pydicom 3.0.2, pylibjpeg 2.1.0, pylibjpeg-libjpeg 2.5.0, numpy 2.4.6; a PNG-only mismatch with
matching pixels is reported as a warning).
"""

import hashlib
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, pixel_array

ARCHIVES = {
    "pydicom-data": (
        "pydicom_data-1.0.0",
        "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
    ),
    "deid-data": ("deid-data-0.0.20", "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed"),
}

# out name, archive key, member path, region index, source sha256, pixel sha256, png sha256
IMAGES = [
    (
        "real_aloka_pelvis.png",
        "pydicom-data",
        "data_store/data/gdcm-US-ALOKA-16.dcm",
        0,
        "f1a2d5f7c4ffe87dc589b12738084099fe44a436f6980f5d7e96a026ad356d65",
        "b0901bfdbb7bb74f0e0261728434e5fdf641c06f215e0f44061fde21921b4b7e",
        "028ee0448f4d4d9500c1379fa4f25e2eb5f07af9e5943b012a8b3c3e76f950ed",
    ),
    (
        "real_epiq_plax.png",
        "pydicom-data",
        "data_store/data/JPGLosslessP14SV1_1s_1f_8b.dcm",
        0,
        "1978d4f058e52d3239fae33f261b3dc74605fdd9f89031fffd57bea6218d0dbf",
        "a0b73627d4c14cbe5869451e601a3300df2012a1a9811021aaba329a78d24b1d",
        "e4ee280877bd2727a5f941bd35dc9c2d61d115330817a5b39ad9e797b27040b6",
    ),
    (
        "real_sonosite_a4c.png",
        "pydicom-data",
        "data_store/data/color3d_jpeg_baseline.dcm",
        0,
        "c8798b8abf8ae0a18e8c9952e7c7f75f3cc8465234b1b63f9e3ba3bebb9d5625",
        "085a9343ab6cd10ac5fb181efef9a16ad61aa488cd46490e053d83af18902e89",
        "a8706052d30ea8d1321257bae220790b0131ad992c8cbac504825c9f131cc0af",
    ),
    (
        "real_air_philips.png",
        "deid-data",
        "deid-data-0.0.20/deid_data/data/ultrasounds/GREYSCALE_IMAGE.dcm",
        0,
        "c4cf836e8ee4816697f3faeea2c2dba692f6ee73955ee7aba9c8e146ac909d55",
        "8b7c8027d92110974636e33b04d1b7ccccfc20ebc40eec9220c32d6f2e81a2ab",
        "36757de8e9d19c2081d18f2edca6e386b028b3a8e68022ca020d6d462997b60f",
    ),
]


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def read_member(archive, member):
    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive, "r:*") as t:
        f = t.extractfile(member)
        if f is None:
            raise KeyError(member)
        return f.read()


def to_grey_crop(raw, region_index):
    ds = pydicom.dcmread(io.BytesIO(raw))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        arr = pixel_array(io.BytesIO(raw), index=0, decoding_plugin="pylibjpeg")
    else:
        arr = ds.pixel_array
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[0]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # RGB (pydicom already converted YBR_FULL_422 to RGB)
        a = arr.astype(np.float64)
        if arr.dtype == np.uint16:
            a = a / 257.0
        g = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    else:  # MONOCHROME2, 8 bit
        g = arr.astype(np.float64)
    g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
    r = ds.SequenceOfUltrasoundRegions[region_index]
    if r.RegionDataType != 1:
        raise ValueError(f"region {region_index} is not a tissue region")
    box = (r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1)
    crop = np.ascontiguousarray(g[box[1] : box[3] + 1, box[0] : box[2] + 1])
    return crop, box


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    paths = {}
    for p in argv[1:3]:
        base = os.path.basename(p).replace("_", "-")
        for key in ARCHIVES:
            if base.startswith(key + "-"):
                paths[key] = p
    if set(paths) != set(ARCHIVES):
        print("need one pydicom-data 1.0.0 wheel and one deid-data 0.0.20 archive, got", argv[1:3])
        return 2
    outdir = (
        argv[3] if len(argv) > 3 else str(Path(__file__).resolve().parents[1] / "tests" / "data" / "real_us")
    )
    os.makedirs(outdir, exist_ok=True)
    for key, p in paths.items():
        h = sha256(Path(p).read_bytes())
        if h != ARCHIVES[key][1]:
            print(f"warning: {p} sha256 {h} differs from the one used ({ARCHIVES[key][1]})")
    failed = False
    for name, key, member, reg, src_h, pix_h, png_h in IMAGES:
        raw = read_member(paths[key], member)
        if sha256(raw) != src_h:
            print(f"warning: {member}: source sha256 differs")
        crop, box = to_grey_crop(raw, reg)
        out = os.path.join(outdir, name)
        Image.fromarray(crop, "L").save(out, optimize=True)
        pix_ok = sha256(crop.tobytes()) == pix_h
        png_ok = sha256(Path(out).read_bytes()) == png_h
        failed |= not pix_ok
        print(
            f"{name:<24} box x{box[0]}-{box[2]} y{box[1]}-{box[3]}  {crop.shape[1]}x{crop.shape[0]}  "
            f"{os.path.getsize(out):7d} B  pixels {'ok' if pix_ok else 'MISMATCH'}  "
            f"png {'identical' if png_ok else 'differs (zlib/Pillow build?)'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
