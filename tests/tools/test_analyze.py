"""`sonoguide analyze` on still images in a scanner style the model never saw, and the image reader.

Besides the four real scanner images (tests/tools/test_analyze_real.py), an "unseen style" set: simulator
frames from held-out phantoms re-drawn in a look no augmentation makes: another display curve, coarser
speckle, another image size, burned-in text. The same view darkened by a lower gain must get a gain increase, brightened a
decrease, and a probe in the air must read as no contact.
"""

from __future__ import annotations

import json
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter

from models.imageprep import ImageError, read_image, resize
from sim.phantom import make_phantom
from sim.sampling import seat_on_skin
from sim.scanner import Scanner
from sim.truth import ground_truth
from tests.cli import run_sonoguide

KEYS = {"image", "gain_change_db", "depth_mm", "contact", "target_visible", "quality", "instruction"}


def unseen_style(frame: np.ndarray) -> np.ndarray:
    """A look no training augmentation produces: logistic display curve, 3×3 speckle smoothing,
    a 5:4 aspect at another size, an annotation bar with text-like blocks."""
    x = uniform_filter(frame.astype(float), 3)
    sig = 1.0 / (1.0 + np.exp(-(x - 100.0) / 45.0))
    lo, hi = 1.0 / (1.0 + np.exp(100.0 / 45.0)), 1.0 / (1.0 + np.exp(-155.0 / 45.0))
    y = np.where(frame > 0, 255.0 * (sig - lo) / (hi - lo), 0.0)
    big = resize(y, 300, 240)
    big[6:14, 10:90:6] = 230.0  # "text" in the corner
    big[150, 60:180:8] = 255.0  # a dotted caliper line
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return run_sonoguide("analyze", *args, timeout=90)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, float, float]]]:
    """Per case, (image path, gain it was taken at, depth) for two held-out phantoms."""
    out: dict[str, list[tuple[Path, float, float]]] = {"dark": [], "bright": [], "air": []}
    folder = tmp_path_factory.mktemp("unseen")
    for preset, seed in (("abdomen", 160003), ("vascular", 160004)):
        ph = make_phantom(preset, seed)
        settings = ph.preset.default
        best = ground_truth(ph, ph.target_pose, settings).best_gain_db
        # Both test gains inside the preset's range, so the best gain is not a clamped one.
        lo, hi = ph.preset.gain_range_db
        assert lo <= best - 14.0 and best + 14.0 <= hi, best
        sc = Scanner(ph, (128, 128))
        for case, gain in (("dark", best - 14.0), ("bright", best + 14.0)):
            s = settings.replace(gain_db=round(gain))
            img = unseen_style(sc.render(ph.target_pose, s, frame_index=3))
            path = folder / f"{preset}-{case}.png"
            Image.fromarray(img).save(path)
            out[case].append((path, s.gain_db, s.depth_mm))
        lifted = seat_on_skin(ph, ph.target_pose, -20.0)
        assert not ground_truth(ph, lifted, settings).contact
        path = folder / f"{preset}-air.npy"
        np.save(path, unseen_style(sc.render(lifted, settings, frame_index=5)))
        out["air"].append((path, settings.gain_db, settings.depth_mm))
    return out


def _run_case(entries: list[tuple[Path, float, float]], preset_of: dict[str, str]) -> list[dict]:
    rows = []
    for path, gain, depth in entries:
        preset = path.name.split("-")[0]
        r = _analyze(
            str(path), "--json", "--preset", preset, "--gain-db", str(gain), "--depth-mm", str(depth)
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 1
        row = json.loads(lines[0])
        assert set(row) >= KEYS and row["image"] == str(path)
        rows.append(row)
    return rows


def test_darkened_views_get_more_gain(scenes) -> None:
    for row in _run_case(scenes["dark"], {}):
        assert row["contact"] is True
        assert row["gain_change_db"] > 0, row


def test_brightened_views_get_less_gain(scenes) -> None:
    for row in _run_case(scenes["bright"], {}):
        assert row["contact"] is True
        assert row["gain_change_db"] < 0, row


def test_probe_in_air_reads_no_contact(scenes) -> None:
    """In a look it never saw the model is less sure than on its own frames (next test): the advice
    may be to press rather than to add gel, but it must be about contact and leave the gain alone."""
    for row in _run_case(scenes["air"], {}):
        assert row["contact"] is False, row
        assert row["gain_change_db"] == 0.0
        assert row["instruction_id"] in ("more_gel", "press"), row


def test_several_images_json_lines_and_table(scenes, tmp_path: Path) -> None:
    paths = [str(p) for p, _, _ in scenes["dark"][:1] + scenes["air"][:1]]
    r = _analyze(*paths, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["image"] for row in rows] == paths
    for row in rows:
        assert 0.0 <= row["target_visible"] <= 1.0 and 0.0 <= row["quality"] <= 1.0
        assert isinstance(row["contact"], bool) and isinstance(row["instruction"], str)
        assert row["depth_mm"] in (60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0, 200.0)
    table = _analyze(*paths)
    assert table.returncode == 0, table.stderr
    assert "gain Δ dB" in table.stdout and "instruction" in table.stdout
    assert all(p in table.stdout for p in paths)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    r = _analyze(paths[0], str(bad), "--json")
    assert r.returncode == 1 and "bad.png" in r.stderr
    assert len(r.stdout.strip().splitlines()) == 1  # the good image is still analysed


# --- the image reader (no pillow at runtime; pillow writes the reference files here) ---------------


def _filters_used(path: Path) -> set[int]:
    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    assert header is not None
    w = int.from_bytes(header[0:4], "big")
    h = int.from_bytes(header[4:8], "big")
    raw = zlib.decompress(idat)
    stride = len(raw) // h
    assert stride * h == len(raw) and stride >= w
    return {raw[i * stride] for i in range(h)}


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_png_reader_matches_pillow(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:37, 0:53]
    grey = ((xx * 4 + yy * 3) % 256).astype(np.uint8)
    grey[10:20] = rng.integers(
        0, 256, (10, 53), dtype=np.uint8
    )  # noise rows push the encoder to other filters
    rgb = np.stack([grey, np.roll(grey, 5, 1), 255 - grey], axis=2)
    path = tmp_path / f"img-{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
        expected = grey
    else:
        img = Image.fromarray(rgb).convert(mode) if mode != "L" else Image.fromarray(grey)
        img.save(path)
        expected = np.asarray(img.convert("L"), dtype=float)
    got = read_image(path)
    assert got.shape == (37, 53) and got.dtype == np.uint8
    assert np.max(np.abs(got.astype(float) - expected)) <= 1.0  # luma rounding only
    if mode == "L":
        assert len(_filters_used(path)) >= 2  # more than one PNG row filter was decoded


def test_reader_errors_name_the_file_and_problem(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    txt = tmp_path / "note.txt"
    txt.write_text("hello")
    with pytest.raises(ImageError, match=r"note\.txt: unsupported image format"):
        read_image(txt)
    inter = tmp_path / "inter.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(inter, interlace=1)
    data = inter.read_bytes()
    if data[28] == 1:  # pillow wrote it interlaced
        with pytest.raises(ImageError, match="interlaced"):
            read_image(inter)
    np.save(tmp_path / "neg.npy", np.full((4, 4), -3.0))
    with pytest.raises(ImageError, match=r"0\.\.255"):
        read_image(tmp_path / "neg.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ImageError, match="2-D"):
        read_image(tmp_path / "cube.npy")
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"cut\.png"):
        read_image(truncated)


def test_resize_keeps_levels_and_averages_areas() -> None:
    flat = np.full((301, 173), 77, np.uint8)
    assert np.allclose(resize(flat, 128, 128), 77.0, atol=1e-4)
    img = np.arange(16, dtype=float).reshape(4, 4)
    assert np.allclose(resize(img, 2, 2), [[2.5, 4.5], [10.5, 12.5]])  # 2×2 block means
    up = resize(np.array([[0.0, 10.0]]), 1, 4)
    assert up[0, 0] == 0.0 and up[0, -1] == 10.0 and np.all(np.diff(up[0]) >= 0)


def test_probe_in_air_as_drawn_reads_no_contact(tmp_path: Path) -> None:
    """The same lifted probes as the unseen-style case, in the simulator's own look."""
    for preset, seed in (("abdomen", 160003), ("vascular", 160004)):
        ph = make_phantom(preset, seed)
        lifted = seat_on_skin(ph, ph.target_pose, -20.0)
        path = tmp_path / f"{preset}-air.npy"
        np.save(path, Scanner(ph, (128, 128)).render(lifted, ph.preset.default, frame_index=5))
        r = _analyze(str(path), "--preset", preset, "--json")
        assert r.returncode == 0, r.stderr
        row = json.loads(r.stdout)
        assert row["contact"] is False and row["instruction"].startswith("Add gel"), row
