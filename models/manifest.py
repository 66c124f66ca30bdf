"""The model folder's ``manifest.json`` and ``MODEL_CARD.md``: what the service needs to run the model
and what a reader needs to trust it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from models import inputs as netmod
from models.goals import goals_report

MIN_SERVICE_VERSION = "0.1.0"

OUTPUTS = (
    (
        "gain_error_db",
        [1, 1],
        "dB",
        "current gain minus best gain; positive = image too bright (change by −value)",
    ),
    ("best_depth_mm", [1, 1], "mm", "imaging depth that shows the whole target at 60-90% of the depth"),
    ("target_visible", [1, 1], "1", "share of the target's standard-view cross-section in the image, 0-1"),
    ("quality", [1, 1], "1", "view quality: target visible and pose near the standard view, 0-1"),
    ("contact", [1, 1], "1", "probability that the probe couples to the skin, 0-1"),
    (
        "correction_mm",
        [1, 3],
        "mm",
        "translation (dx slide, dy sweep, dz press) to the target view, current probe frame",
    ),
    (
        "correction_deg",
        [1, 3],
        "deg",
        "rotation vector (rx tilt, ry rock, rz rotate) to the target view, current probe frame",
    ),
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_specs() -> list[dict[str, Any]]:
    n = netmod.INPUT_SIZE
    return [
        {
            "name": "image",
            "shape": [1, 1, n, n],
            "dtype": "float32",
            "layout": "NCHW",
            "source": "B-mode frame, 8-bit grey, rows = depth from the probe face to the imaging depth",
            "resize": {
                "height": n,
                "width": n,
                "method": "area average when shrinking, bilinear when growing",
            },
            "normalisation": {
                "formula": "(pixel * scale - mean) / std",
                "scale": 1.0 / 255.0,
                "mean": netmod.IMAGE_MEAN,
                "std": netmod.IMAGE_STD,
            },
        },
        {
            "name": "scalars",
            "shape": [1, 2],
            "dtype": "float32",
            "fields": [
                {
                    "name": "depth_mm",
                    "unit": "mm",
                    "scale": netmod.DEPTH_SCALE,
                    "meaning": "current imaging depth",
                },
                {
                    "name": "freq_mhz",
                    "unit": "MHz",
                    "scale": netmod.FREQ_SCALE,
                    "meaning": "current transmit frequency",
                },
            ],
        },
    ]


def output_specs() -> list[dict[str, Any]]:
    return [{"name": n, "shape": s, "dtype": "float32", "unit": u, "meaning": m} for n, s, u, m in OUTPUTS]


def write_manifest(folder: Path, fields: dict[str, Any], files: list[str]) -> Path:
    """``manifest.json`` with the sha256 of every listed file (written atomically)."""
    manifest = dict(fields)
    manifest["files"] = {name: sha256(folder / name) for name in sorted(files)}
    path = folder / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _metric_rows(ev: dict[str, Any]) -> str:
    fp, q = ev["fp32"], ev["int8"]
    goals = ev["goals"]
    rows = [
        ("gain error MAE (dB), contact frames", "gain_mae_db", f"≤ {goals['gain_mae_db']}"),
        ("depth within one step", "depth_within_one_step", f"≥ {goals['depth_within_one_step']}"),
        ("depth exact step", "depth_exact_step", ""),
        (
            "pose correction direction right (target visible)",
            "direction_correct",
            f"≥ {goals['direction_correct']}",
        ),
        ("correction MAE (mm), target visible", "correction_mae_mm", ""),
        ("correction MAE (deg), target visible", "correction_mae_deg", ""),
        ("target_visible MAE", "target_visible_mae", ""),
        ("quality MAE", "quality_mae", ""),
        ("contact accuracy", "contact_accuracy", ""),
    ]
    lines = ["| metric | FP32 | INT8 | goal |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {fp[k]} | {q[k]} | {goal} |" for label, k, goal in rows]
    lines.append(
        f"| latency, batch 1, 1 thread (median ms) | {ev['latency']['fp32']['median_ms']} | {ev['latency']['int8']['median_ms']} | INT8 ≤ FP32 |"
    )
    return "\n".join(lines)


def unmet_goals(ev: dict[str, Any]) -> list[str]:
    """The acceptance goals the INT8 model misses on the held-out set, in words."""
    q, goals = ev["int8"], ev["goals"]
    report = goals_report(
        q,
        {
            "gain_mae_db": ("<=", goals["gain_mae_db"]),
            "depth_within_one_step": (">=", goals["depth_within_one_step"]),
            "direction_correct": (">=", goals["direction_correct"]),
        },
    )
    out = []
    if report["gain_mae_db"]["met"] is False:
        out.append(f"gain error MAE {q['gain_mae_db']} dB (goal ≤ {goals['gain_mae_db']})")
    for key, label in (
        ("depth_within_one_step", "depth within one step"),
        ("direction_correct", "pose direction right"),
    ):
        if report[key]["met"] is False:
            out.append(f"{label} {q[key]:.1%} (goal ≥ {goals[key]:.0%})")
    return out


def _real_images_text(real: dict[str, Any] | None) -> str:
    """The card's paragraph on real scanner images, from what the build measured on them."""
    if not real:
        return "- **Not measured on real scanner images** (tests/data/real_us/ was missing at build time)."

    def listed(values: list[float], unit: str = "") -> str:
        return " / ".join(f"{v:+g}{unit}" if unit else f"{v:.2f}" for v in values)

    tissue = "; ".join(
        f"{name.removeprefix('real_').removesuffix('.png')} {listed(r['gain_error_db'], ' dB')}"
        for name, r in real["tissue"].items()
    )
    shifts = next(iter(real["tissue"].values()))["shifts_db"]
    lowest = min(min(r["contact_probability"]) for r in real["tissue"].values())
    air = []
    for name, r in real["air"].items():
        wrong = [d for d, p in zip(r["shifts_db"], r["contact_probability"], strict=True) if p >= 0.5]
        verdict = (
            "no contact at every shift"
            if not wrong
            else "**contact** (wrong) at " + ", ".join(f"{d:+g} dB" for d in wrong)
        )
        air.append(
            f"{name} at {listed(r['shifts_db'], ' dB')}: contact probability "
            f"{listed(r['contact_probability'])}, {verdict}"
        )
    return (
        "- **Real scanner images: four, from public test data** (`tests/data/real_us/`: Aloka SSD-4000\n"
        "  pelvis, Philips EPIQ 7C parasternal long axis, SonoSite Turbo four-chamber, and a Philips EPIQ 5G\n"
        "  linear probe held in the air), each also with its display gain shifted, measured by the build\n"
        f"  that made this model (INT8, `models/real_images.py`). Gain error read at {listed(shifts, ' dB')}:\n"
        f"  {tissue}; contact probability ≥ {math.floor(lowest * 100) / 100:.2f} on all of them. The reference grey (tissue at\n"
        "  40/255) was set from those three images, so they show the response to a gain change, not the\n"
        f"  zero point. Probe in the air: {'; '.join(air)}. `tests/tools/test_analyze_real.py` holds\n"
        "  `sonoguide analyze` to darker → more gain, brighter → less, air → no contact. Nothing beyond\n"
        "  that is measured on patients: target visibility, quality and the pose correction are scored on\n"
        "  the simulator's anatomy only."
    )


def model_card(fields: dict[str, Any]) -> str:
    ev = fields["evaluation"]
    tr = fields["training"]
    missed = unmet_goals(ev)
    axes = ev["int8"]["direction_sign_by_axis"]
    missed_text = (
        "**Goals not met:** "
        + "; ".join(missed)
        + ". The in-plane components are learnt (sign right: "
        + ", ".join(f"{k} {axes[k]:.0%}" for k in ("dx", "dz", "ry"))
        + "); the out-of-plane ones are not ("
        + ", ".join(f"{k} {axes[k]:.0%}" for k in ("dy", "rx", "rz"))
        + "), which caps the 6-D direction score."
        if missed
        else "All acceptance goals are met on the held-out set."
    )
    return f"""# {fields["name"]} {fields["version"]} — model card

## Intended use
Advisory guidance during ultrasound **acquisition**: how bright the image is against the best gain,
which imaging depth shows the target, whether the probe couples to the skin, whether the exam's
target view is in the image and which probe motion brings it closer. The sonoguide service turns these
into automatic gain/depth changes (visible, logged, always overridden by a manual change) and words
for a novice. **It is not a diagnostic device**: it says nothing about anatomy or pathology and must
not be used to interpret images.

## Inputs and outputs
One 8-bit grey B-mode frame (any size; resized to {fields["inputs"][0]["shape"][2]}×{fields["inputs"][0]["shape"][3]}), the current
imaging depth (mm) and frequency (MHz). Outputs and units are listed in `manifest.json`. The current
gain is deliberately *not* an input: the gain error is read from the image's brightness, so the model
does not depend on how a scanner's gain dial is calibrated.

## Training data
Simulator only (`sim/`, the virtual bench): {tr["description"]}
Training phantom seeds {tr["train_seeds"][0]}–{tr["train_seeds"][1]}, held-out evaluation seeds from
{tr["eval_seeds"][0]}, closed-loop evaluation seeds ≥ {tr["closed_loop_seed_min"]}. Training seed {tr["seed"]}.
Augmentations for other scanners: {", ".join(tr["augmentations"])}.

## Evaluation (held-out phantoms, ONNX Runtime {", ".join(fields["onnxruntime_tested"])}, CPU)
{ev["frames"]} frames from {ev["phantoms"]} held-out phantoms (seeds {ev["seeds"][0]}–{ev["seeds"][1]}).

{_metric_rows(ev)}

{missed_text}

Definitions: `models/evaluate.py`. "Direction right": the predicted correction's dot product with
the true one is positive (translation in units of 4 mm, rotation in units of 4°), over frames with
the target visible (≥ 5%) and a correction of at least 4 mm or 4°.

## Known limits
{_real_images_text(ev.get("real_images"))}
- Three exam presets only (abdomen/kidney, vascular/carotid bulb, cardiac/LV long axis) with the
  simulator's anatomy; other targets are out of scope.
- Out-of-plane motion (sweep dy, tilt rx, turn rz) is read from what lies just off the plane on
  either side (the simulator's anatomy has one handedness, as patients do: see docs/sim.md); a
  patient whose anatomy differs from the simulator's on that point would mislead those signs. The
  per-axis sign accuracy in `manifest.json` says how often each axis is right; the service searches
  the axes below 65% instead of following them.
- Gain error is defined against a tissue median at grey 40/255 (where three vendors' real images put
  it); a scanner or sonographer preferring a much brighter or darker display biases it. Saturated
  images (gain far too high) read as "at least this bright".
- Without skin contact every head but `contact` is meaningless (gain error is 0 by definition).
"""
