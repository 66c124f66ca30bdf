"""The model contract this service can run: checked on a bundle's model manifest before it is installed.

The service reads a model only through its manifest (docs/model.md): two inputs, a grey image in NCHW
with a normalisation and a row of known scalars, and the outputs by name with their units. A model
that needs a newer service, another input layout, other outputs or presets the service does not
know is refused here with the reason, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Output name -> the unit the manifest must declare (the daemon's ModelOutput reads these).
OUTPUT_UNITS = {
    "gain_error_db": "dB",
    "best_depth_mm": "mm",
    "target_visible": "1",
    "quality": "1",
    "contact": "1",
    "correction_mm": "mm",
    "correction_deg": "deg",
}
SCALAR_INPUTS = frozenset({"depth_mm", "freq_mhz", "gain_db"})


def version_key(version: str) -> tuple[int, ...]:
    """``"1.10.2"`` -> (1, 10, 2); a part that is not a number counts as 0."""
    return tuple(int(p) if p.isdigit() else 0 for p in str(version).split("."))


def contract_problems(
    manifest: dict[str, Any], service_version: str, known_presets: Iterable[str] | None = None
) -> list[str]:
    """Everything that keeps this service from running the model described by ``manifest``."""
    problems: list[str] = []
    needs = str(manifest.get("min_service_version", "0"))
    if version_key(needs) > version_key(service_version):
        problems.append(f"needs service {needs} or newer, this is {service_version}")
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 2:
        return [*problems, "input contract: expected two inputs (image, scalars)"]
    image, scalars = inputs
    shape = image.get("shape") if isinstance(image, dict) else None
    if not (isinstance(shape, list) and len(shape) == 4 and shape[:2] == [1, 1]):
        problems.append(f"input contract: image shape must be [1, 1, H, W], got {shape}")
    elif not all(isinstance(v, int) and 8 <= v <= 1024 for v in shape[2:]):
        problems.append(f"input contract: image height and width must be 8..1024, got {shape[2:]}")
    if isinstance(image, dict):
        if image.get("layout") != "NCHW" or image.get("dtype") != "float32":
            problems.append(
                f"input contract: image must be float32 NCHW, got {image.get('dtype')} {image.get('layout')}"
            )
        norm = image.get("normalisation")
        if not isinstance(norm, dict) or not all(
            isinstance(norm.get(k), (int, float)) for k in ("scale", "mean", "std")
        ):
            problems.append("input contract: image normalisation needs numeric scale, mean and std")
        elif not norm["std"]:
            problems.append("input contract: image normalisation std must not be 0")
    fields = scalars.get("fields") if isinstance(scalars, dict) else None
    if not isinstance(fields, list) or not fields:
        problems.append("input contract: the scalars input must list its fields")
    else:
        names = {str(f.get("name")) for f in fields if isinstance(f, dict)}
        unknown = sorted(names - SCALAR_INPUTS)
        if unknown:
            problems.append(
                f"input contract: unknown scalar inputs {unknown}; known: {sorted(SCALAR_INPUTS)}"
            )
    outputs = manifest.get("outputs")
    units = (
        {o.get("name"): o.get("unit") for o in outputs if isinstance(o, dict)}
        if isinstance(outputs, list)
        else {}
    )
    for name, unit in OUTPUT_UNITS.items():
        if units.get(name) != unit:
            problems.append(
                f"output contract: {name!r} must be declared in {unit!r}, got {units.get(name)!r}"
            )
    if known_presets is not None:
        prior = (manifest.get("guidance") or {}).get("prior") or {}
        unknown_presets = sorted(set(prior) - set(known_presets)) if isinstance(prior, dict) else []
        if unknown_presets:
            problems.append(
                f"presets {unknown_presets} are unknown to this service (known: {sorted(known_presets)})"
            )
    return problems
