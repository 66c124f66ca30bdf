"""`sonoguide analyze IMAGE... [--gain-db G] [--depth-mm D] [--preset P] [--json]`: the model and the
controllers' decisions on still images (8-bit PNG or .npy, any size).

For each image: the recommended gain change (the auto-gain controller's dead band and the preset's
gain range applied, the whole way at once rather than in its per-frame steps), the recommended depth
step, contact, target visibility, view quality and the guidance instruction a novice would see.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PRESET_NAMES = ("abdomen", "vascular", "cardiac")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="8-bit grey PNG or .npy")
    parser.add_argument(
        "--preset", choices=PRESET_NAMES, default="abdomen", help="exam preset (default abdomen)"
    )
    parser.add_argument(
        "--gain-db", type=float, default=None, help="gain the images were taken at (default: the preset's)"
    )
    parser.add_argument(
        "--depth-mm", type=float, default=None, help="imaging depth of the images (default: the preset's)"
    )
    parser.add_argument(
        "--freq-mhz", type=float, default=None, help="transmit frequency (default: the preset's)"
    )
    parser.add_argument("--model", default="", help="model version folder (default: the shipped model)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image, one per line")


def decide(out: Any, gain_db: float, depth_mm: float, preset: Any) -> dict[str, Any]:
    """The controllers' and the guidance's decisions on one model output (pure)."""
    from service.policy.autotune import AutoDepth, AutoGain, GainParams, ProbeLimits
    from service.policy.guidance import GuidanceParams, choose_instruction, model_correction

    limits = ProbeLimits(
        gain_min_db=preset.gain_range_db[0],
        gain_max_db=preset.gain_range_db[1],
        gain_step_db=preset.gain_step_db,
        depth_steps_mm=tuple(sorted(preset.depth_steps_mm)),
    )
    guidance = GuidanceParams()
    in_contact = out.contact >= guidance.contact_min
    # A still image has no "next frame": ask for the whole change at once, not one bounded step.
    whole_range = limits.gain_max_db - limits.gain_min_db
    gain = AutoGain(
        limits,
        GainParams(
            max_step_db=whole_range, smoothing=1.0, fine_frames=1, coarse_frames=1, coarse_max_db=whole_range
        ),
    )
    change = gain.update(out.gain_error_db, gain_db, now=0.0) if in_contact else None
    depth = AutoDepth(limits).recommend(out.best_depth_mm) if in_contact else depth_mm
    instruction = choose_instruction(
        model_correction(out.correction_mm, out.correction_deg, out.confidence),
        out.quality,
        out.contact,
        guidance,
    )
    return {
        "gain_change_db": round(change.new - change.old, 1) if change else 0.0,
        "gain_reason": change.reason
        if change
        else ("no skin contact" if not in_contact else "gain is right"),
        "depth_mm": float(depth),
        "contact": bool(in_contact),
        "instruction": instruction.text,
        "instruction_id": instruction.id,
    }


def analyze_one(
    model: Any, path: Path, gain_db: float, depth_mm: float, freq_mhz: float, preset: Any
) -> dict[str, Any]:
    from models.imageprep import read_image

    image = read_image(path)
    # A still image: with a clip head, the image repeated as a clip with the motion unknown.
    still = getattr(model, "predict_still", model.predict)
    out = still(image, gain_db, depth_mm, freq_mhz)
    row: dict[str, Any] = {"image": str(path)}
    row.update(decide(out, gain_db, depth_mm, preset))
    row.update(
        {
            "target_visible": round(out.target_visible, 3),
            "quality": round(out.quality, 3),
            "contact_probability": round(out.contact, 3),
            "gain_error_db": round(out.gain_error_db, 2),
            "best_depth_mm": round(out.best_depth_mm, 1),
            "correction_mm": [round(v, 1) for v in out.correction_mm],
            "correction_deg": [round(v, 1) for v in out.correction_deg],
            "input": {
                "gain_db": gain_db,
                "depth_mm": depth_mm,
                "freq_mhz": freq_mhz,
                "size": list(image.shape),
            },
        }
    )
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("image", "gain Δ dB", "depth mm", "contact", "visible", "quality", "instruction")
    body = [
        (
            r["image"],
            f"{r['gain_change_db']:+.1f}",
            f"{r['depth_mm']:.0f}",
            "yes" if r["contact"] else "no",
            f"{r['target_visible']:.2f}",
            f"{r['quality']:.2f}",
            r["instruction"],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from models.imageprep import ImageError
    from service.daemon.onnx_model import ModelLoadError, load_model
    from sim.presets import get_preset

    preset = get_preset(args.preset)
    gain_db = preset.default.gain_db if args.gain_db is None else args.gain_db
    depth_mm = preset.default.depth_mm if args.depth_mm is None else args.depth_mm
    freq_mhz = preset.default.freq_mhz if args.freq_mhz is None else args.freq_mhz
    if not (depth_mm > 0 and freq_mhz > 0):
        print(
            f"sonoguide analyze: --depth-mm and --freq-mhz must be positive (got {depth_mm}, {freq_mhz})",
            file=sys.stderr,
        )
        return 2
    try:
        model = load_model(args.model, threads=1)
    except ModelLoadError as exc:
        print(f"sonoguide analyze: {exc}", file=sys.stderr)
        return 1
    rows, failed = [], 0
    for path in args.images:
        try:
            row = analyze_one(model, path, gain_db, depth_mm, freq_mhz, preset)
        except (ImageError, OSError) as exc:
            failed += 1
            print(f"sonoguide analyze: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(row), flush=True)
        rows.append(row)
    if rows and not args.json:
        print(
            f"model {model.name} {model.version} on {model.provider}; preset {preset.name}, "
            f"gain {gain_db:g} dB, depth {depth_mm:g} mm, {freq_mhz:g} MHz"
        )
        print(format_table(rows))
    return 1 if failed else 0
