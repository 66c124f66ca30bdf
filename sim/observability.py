"""How much a probe motion away from the standard view changes what the image can show.

The ground truth scores a pose by its distance from *one* standard pose (``sim.truth``: quality falls
with the angle whatever the image shows). An image-reading model can only follow what changes the
anatomy in the frame. This measures, per direction of motion away from the standard view:

- **anatomy changed**: the share of the frame's beam-grid samples (in contact) whose tissue label
  differs from the standard view's: what any perception, however good, has to go on (speckle is left
  out: it is fixed in the tissue and says nothing about where the view is);
- **visible** and **quality** from ``sim.truth`` at the moved pose.

A direction in which quality falls while the anatomy barely changes is one the image cannot guide
along; the camera belief then has only the prior (docs/evaluation.md, "near-null directions").
The pivots turn the probe about the target's centre, so the image plane keeps cutting the target
through its middle (a sonographer's "heel-toe" rock or fan that keeps the organ in view).

    python -m sim.observability [--phantoms 8] [--seed-base 150000]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np

from sim.phantom import Phantom, make_phantom
from sim.presets import PRESETS, get_preset
from sim.scanner import Scanner
from sim.truth import ground_truth, pose_error
from sim.types import ImagingSettings, Pose

Motion = tuple[np.ndarray, np.ndarray]  # probe-frame translation (mm), rotation vector (deg)


def pivot_motion(depth_mm: float, axis: int, deg: float) -> Motion:
    """The probe-frame motion (for ``Pose.apply_motion``) that turns the probe by ``deg`` about its
    own ``axis`` (0 = x, 1 = y) through the point ``depth_mm`` straight below the face centre, which
    stays where it is."""
    if axis not in (0, 1):
        raise ValueError(f"pivot axis must be 0 (x) or 1 (y), got {axis}")
    rotation = np.zeros(3)
    rotation[axis] = deg
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    turn = (
        np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        if axis == 0
        else np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    )
    q = np.array([0.0, 0.0, depth_mm])
    return q - turn @ q, rotation


def target_depth_mm(phantom: Phantom) -> float:
    """How deep the target's centre lies below the face at the standard view."""
    pose = phantom.target_pose
    return float((phantom.target.center - pose.position_mm) @ pose.rotation_matrix()[:, 2])


def _along(index: int, amount: float) -> Motion:
    v = np.zeros(6)
    v[index] = amount
    return v[:3], v[3:]


# name -> (unit, motion of that amount away from the standard view)
DIRECTIONS: dict[str, tuple[str, Callable[[Phantom, float], Motion]]] = {
    "slide dx": ("mm", lambda ph, a: _along(0, a)),
    "sweep dy": ("mm", lambda ph, a: _along(1, a)),
    "tilt rx at the face": ("deg", lambda ph, a: _along(3, a)),
    "tilt rx about the target": ("deg", lambda ph, a: pivot_motion(target_depth_mm(ph), 0, a)),
    "rock ry at the face": ("deg", lambda ph, a: _along(4, a)),
    "rock ry about the target": ("deg", lambda ph, a: pivot_motion(target_depth_mm(ph), 1, a)),
    "rotate rz": ("deg", lambda ph, a: _along(5, a)),
}
AMOUNTS = {"mm": (2.0, 4.0, 8.0), "deg": (4.0, 8.0, 12.0)}


def view_residual(phantom: Phantom, pose: Pose) -> dict[str, float]:
    """Where the target's centre lies in the image at ``pose``, against the standard view (mm: off
    the image plane, across the image, in depth), and the angle left (deg, as ``sim.truth``). Small
    offsets with a large angle: the probe images the target through its middle, turned about it."""
    rel = pose.rotation_matrix().T @ (phantom.target.center - pose.position_mm)
    std = phantom.target_pose.rotation_matrix().T @ (phantom.target.center - phantom.target_pose.position_mm)
    _, angle = pose_error(pose, phantom.target_pose)
    return {
        "off_plane_mm": round(float(rel[1] - std[1]), 1),
        "across_mm": round(float(rel[0] - std[0]), 1),
        "depth_mm": round(float(rel[2] - std[2]), 1),
        "angle_deg": round(angle, 1),
    }


def anatomy_changed(reference: np.ndarray, labels: np.ndarray) -> float:
    """Share of beam-grid samples whose tissue label differs between two frames' label grids."""
    if reference.shape != labels.shape:
        raise ValueError(f"label grids differ in shape: {reference.shape} vs {labels.shape}")
    return float(np.mean(reference != labels))


def observe(
    phantom: Phantom, scanner: Scanner, settings: ImagingSettings, motion: Motion, reference: np.ndarray
) -> tuple[float, float, float]:
    """(anatomy changed, visible, quality) at the standard view moved by ``motion``."""
    pose: Pose = phantom.target_pose.apply_motion(*motion)
    gt = ground_truth(phantom, pose, settings)
    return anatomy_changed(reference, scanner.labels(pose, settings)), gt.target_visible, gt.quality


def table(presets: Sequence[str], seeds: Sequence[int]) -> list[dict[str, object]]:
    """Per preset, direction and amount: the three figures averaged over phantoms and both signs."""
    rows: list[dict[str, object]] = []
    for preset in presets:
        settings = get_preset(preset).default
        sums: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
        for seed in seeds:
            ph = make_phantom(preset, seed)
            sc = Scanner(ph)
            reference = sc.labels(ph.target_pose, settings)
            for name, (unit, motion) in DIRECTIONS.items():
                for amount in AMOUNTS[unit]:
                    for sign in (1.0, -1.0):
                        sums.setdefault((name, amount), []).append(
                            observe(ph, sc, settings, motion(ph, sign * amount), reference)
                        )
        for (name, amount), values in sums.items():
            changed, visible, quality = np.mean(values, axis=0)
            rows.append(
                {"preset": preset, "direction": name, "amount": amount, "unit": DIRECTIONS[name][0],
                 "anatomy_changed": round(float(changed), 3), "visible": round(float(visible), 2),
                 "quality": round(float(quality), 2)}
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantoms", type=int, default=8, help="phantoms per preset (default 8)")
    p.add_argument("--seed-base", type=int, default=150000, help="first phantom seed (default: held-out)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated (default: all)")
    args = p.parse_args(argv)
    if args.phantoms < 1:
        p.error("--phantoms must be at least 1")
    presets = [s for s in args.presets.split(",") if s]
    unknown = [s for s in presets if s not in PRESETS]
    if unknown:
        p.error(f"unknown preset(s) {', '.join(unknown)} (choose from {', '.join(PRESETS)})")
    rows = table(presets, range(args.seed_base, args.seed_base + args.phantoms))
    print("| preset | direction | amount | anatomy changed | visible | quality |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['direction']} | {r['amount']:g} {r['unit']} | {r['anatomy_changed']:.3f} "
            f"| {r['visible']:.2f} | {r['quality']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
