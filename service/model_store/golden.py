"""Golden vectors: a few reference inputs with the FP32 and INT8 outputs the vendor measured, and
tolerances; the device runs them on its own execution provider before it trusts a model version.

INT8 on TensorRT need not equal INT8 on the CPU, but a correct build stays near both. The tolerance
of each output is the larger of a floor in its unit and twice the worst FP32-INT8 difference the
vendor saw on these inputs: how far quantization itself moved the answer bounds how far another
correct INT8 kernel may move it. ``golden.json``::

    {"format": "sonoguide-golden/1",
     "tolerance": {"gain_error_db": 0.5, ...},
     "vectors": [{"id": ..., "depth_mm": ..., "freq_mhz": ..., "gain_db": ...,
                  "image": {"shape": [H, W], "b64": <uint8 bytes>},
                  "fp32": {"gain_error_db": [..], ...}, "int8": {...}}]}

A model with a clip head adds ``clip_*`` outputs to each vector: the head's correction and spread for
a clip of the vector's frame repeated with a fixed tracked motion (``clip_golden_motion``), so the
device checks the head and the motion path on its own provider too. Older files without them still
check the frame outputs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np

from service.model_store import ModelStoreError
from service.model_store.compat import OUTPUT_UNITS

FORMAT = "sonoguide-golden/1"
Runner = Callable[[np.ndarray, float, float, float], dict[str, np.ndarray]]  # image, depth, freq, gain
# The smallest tolerance per unit: below these a difference means nothing for gain, depth or guidance.
UNIT_FLOOR = {"dB": 0.5, "mm": 2.0, "1": 0.03, "deg": 1.0}
# (id, exam preset, phantom seed, slide mm, lift mm): on the target view, off it, in air, another exam.
GOLDEN_SCENES = (
    ("abdomen-target", "abdomen", 7, 0.0, 0.0),
    ("abdomen-off-view", "abdomen", 7, 25.0, 0.0),
    ("abdomen-in-air", "abdomen", 7, 0.0, -40.0),
    ("vascular-target", "vascular", 11, 0.0, 0.0),
)


# The clip head's golden outputs (``OnnxModel.golden_run``): correction and 1 sd, split by unit.
CLIP_UNITS = {
    "clip_correction_mm": "mm",
    "clip_correction_deg": "deg",
    "clip_sd_mm": "mm",
    "clip_sd_deg": "deg",
}


def clip_golden_motion(earlier_frames: int) -> np.ndarray:
    """(1, earlier_frames, 7) a fixed tracked motion for the golden clips: each earlier frame a little
    further along every axis (units of the head's input), with the tracked flag set."""
    steps = np.arange(1, earlier_frames + 1, dtype=np.float32)[:, None]
    along = np.array([0.3, -0.2, 0.05, 0.2, -0.1, 0.4], np.float32)[None, :]
    return np.concatenate([steps * along, np.ones((earlier_frames, 1), np.float32)], axis=1)[None]


def golden_inputs(size: int = 128) -> list[tuple[str, np.ndarray, float, float, float]]:
    """Reference B-mode frames from the simulator (seeded, so the same on every machine)."""
    from firmware_bridge.emulator.images import SimImageSource

    inputs = []
    for vid, preset, seed, slide_mm, lift_mm in GOLDEN_SCENES:
        source = SimImageSource(preset, seed, width=size, height=size)
        pose = source.phantom.target_pose.apply_motion([slide_mm, 0.0, lift_mm], [0.0, 0.0, 0.0])
        params = source.default_params()
        image = source.render(params, source.emulator_pose(pose), 0.0)
        inputs.append((vid, image, params["depth_mm"], params["freq_mhz"], params["gain_db"]))
    return inputs


UNITS = {**OUTPUT_UNITS, **CLIP_UNITS}


def _lists(outputs: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The checked outputs as lists: the frame outputs always, the clip head's where the model has one."""
    keys = [*OUTPUT_UNITS, *(k for k in CLIP_UNITS if k in outputs)]
    return {k: [float(x) for x in np.asarray(outputs[k], float).ravel()] for k in keys}


def make_golden(
    inputs: list[tuple[str, np.ndarray, float, float, float]], run_int8: Runner, run_fp32: Runner
) -> dict[str, Any]:
    vectors: list[dict[str, Any]] = []
    worst: dict[str, float] = {}
    for vid, image, depth, freq, gain in inputs:
        int8, fp32 = _lists(run_int8(image, depth, freq, gain)), _lists(run_fp32(image, depth, freq, gain))
        for k in int8:
            worst[k] = max(worst.get(k, 0.0), *(abs(a - b) for a, b in zip(int8[k], fp32[k], strict=True)))
        img = np.ascontiguousarray(image, np.uint8)
        vectors.append(
            {
                "id": vid,
                "depth_mm": depth,
                "freq_mhz": freq,
                "gain_db": gain,
                "image": {"shape": list(img.shape), "b64": base64.b64encode(img.tobytes()).decode()},
                "fp32": fp32,
                "int8": int8,
            }
        )
    tolerance = {k: round(max(UNIT_FLOOR[UNITS[k]], 2.0 * v), 4) for k, v in worst.items()}
    return {"format": FORMAT, "tolerance": tolerance, "vectors": vectors}


def _image(vector: dict[str, Any]) -> np.ndarray:
    try:
        h, w = (int(v) for v in vector["image"]["shape"])
        raw = base64.b64decode(vector["image"]["b64"], validate=True)
        return np.frombuffer(raw, np.uint8).reshape(h, w)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelStoreError(f"golden vector {vector.get('id')!r}: unreadable image: {exc}") from None


def check_golden(golden: dict[str, Any], run: Runner, where: str) -> dict[str, Any]:
    """Run every vector; raise naming the worst output when one is out of tolerance, else a report
    ``{"vectors": n, "worst": {output: [deviation, tolerance]}}``. ``where``: the execution provider."""
    if golden.get("format") != FORMAT or not golden.get("vectors"):
        raise ModelStoreError(f"golden.json: not a {FORMAT} file with vectors")
    tolerance = golden.get("tolerance") or {}
    worst: dict[str, list[float]] = {}
    failures = []
    for vector in golden["vectors"]:
        try:
            got = _lists(
                run(
                    _image(vector),
                    float(vector["depth_mm"]),
                    float(vector["freq_mhz"]),
                    float(vector["gain_db"]),
                )
            )
        except ModelStoreError:
            raise
        except Exception as exc:  # ONNX Runtime raises its own types
            raise ModelStoreError(
                f"golden vector {vector.get('id')!r} failed to run on {where}: {exc}"
            ) from None
        for k in [*OUTPUT_UNITS, *(c for c in CLIP_UNITS if c in vector["int8"])]:
            tol = float(tolerance.get(k, UNIT_FLOOR[UNITS[k]]))
            want = vector["int8"][k]
            if k not in got:
                failures.append(
                    f"{k}: the model gives none (the golden vectors are of a model with a clip head)"
                )
                continue
            dev = max(
                abs(a - b) if np.isfinite(a) else float("inf") for a, b in zip(got[k], want, strict=True)
            )
            if dev > worst.get(k, [-1.0])[0]:
                worst[k] = [round(dev, 4), tol]
            if not dev <= tol:
                failures.append(f"{k} off by {dev:.3g} {UNITS[k]} (tolerance {tol:g}) on {vector['id']}")
    if failures:
        raise ModelStoreError(
            f"golden vectors out of tolerance on {where}: "
            + "; ".join(failures[:3])
            + (f" and {len(failures) - 3} more" if len(failures) > 3 else "")
        )
    return {"vectors": len(golden["vectors"]), "provider": where, "worst": worst}
