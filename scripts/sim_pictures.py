"""Draw the simulator pictures in docs/images/ (needs pillow, a dev dependency).

python scripts/sim_pictures.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sim.camera import default_camera, render_camera
from sim.phantom import make_phantom
from sim.presets import PRESETS
from sim.scanner import Scanner
from sim.truth import ground_truth

PANEL = 256
CAPTION = 30


def _panel(image: np.ndarray, caption: str) -> Image.Image:
    tile = Image.new("RGB", (PANEL, PANEL + CAPTION), (0, 0, 0))
    tile.paste(Image.fromarray(image).convert("RGB").resize((PANEL, PANEL)), (0, CAPTION))
    ImageDraw.Draw(tile).text((6, 8), caption, fill=(255, 255, 140))
    return tile


def preset_strip(name: str, seed: int) -> Image.Image:
    ph = make_phantom(name, seed)
    sc = Scanner(ph)
    p = PRESETS[name]
    base = p.default
    gt = ground_truth(ph, ph.target_pose, base)
    best = base.replace(gain_db=round(gt.best_gain_db), depth_mm=gt.best_depth_mm)
    shallow = min(p.depth_steps_mm)
    views = [
        ("standard view, best gain/depth", ph.target_pose, best),
        ("gain -15 dB", ph.target_pose, best.replace(gain_db=best.gain_db - 15)),
        ("gain +20 dB", ph.target_pose, best.replace(gain_db=best.gain_db + 20)),
        (f"depth {shallow:.0f} mm (too shallow)", ph.target_pose, best.replace(depth_mm=shallow)),
        (
            f"{max(p.freqs_mhz):g} MHz, depth {max(p.depth_steps_mm):.0f}",
            ph.target_pose,
            best.replace(freq_mhz=max(p.freqs_mhz), depth_mm=max(p.depth_steps_mm)),
        ),
        ("slid 12 mm, rotated 30 deg", ph.target_pose.apply_motion([12, 0, 0], [0, 0, 30]), best),
        ("swept 10 mm, tilted 10 deg", ph.target_pose.apply_motion([0, 10, 0], [10, 0, 0]), best),
        ("rocked 25 deg (heel lifts)", ph.target_pose.apply_motion([0, 0, 0], [0, 25, 0]), best),
    ]
    tiles = [_panel(sc.render(pose, s, i), cap) for i, (cap, pose, s) in enumerate(views)]
    strip = Image.new("RGB", (PANEL * 4, 2 * (PANEL + CAPTION)))
    for i, t in enumerate(tiles):
        strip.paste(t, ((i % 4) * PANEL, (i // 4) * (PANEL + CAPTION)))
    return strip


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images")
    out.mkdir(parents=True, exist_ok=True)
    for name in PRESETS:
        preset_strip(name, 1).save(out / f"sim_{name}.png", optimize=True)
    ph = make_phantom("abdomen", 1)
    rgb, depth = render_camera(ph, ph.target_pose, default_camera(1), 0, 1)
    depth_vis = (np.clip((depth.astype(float) - 450) / 300, 0, 1) * 255).astype(np.uint8)
    both = Image.new("RGB", (1280, 480))
    both.paste(Image.fromarray(rgb), (0, 0))
    both.paste(Image.fromarray(depth_vis).convert("RGB"), (640, 0))
    both.save(out / "sim_camera.png", optimize=True)
    print(f"wrote pictures to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
