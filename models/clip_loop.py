"""The clip head on the states the closed loop visits: how well it does there, and fine-tuning it there.

``service.tools.evaluate.loop_windows`` records the head's own inputs frame by frame in closed-loop
episodes on training phantoms, with the truth. Here those windows (the last tenth of the phantoms
held out) say how the head signs and how well its spread holds the truth *where the loop goes*, which
the rendered trajectories of ``models.clip_head`` do not; and ``--finetune`` goes on training the
shipped head on them (DAgger's step: train on the states the policy visits), re-calibrates its spread
on the held-out loop phantoms and writes a candidate model folder for ``sonoguide eval --model``.

    python -m models.clip_loop --model models/sonoguide-view/1.5.0 --windows build/loop-windows/a.npz
    ... --finetune build/clip-loop/candidate --epochs 6      # needs the train extra (torch)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from models.clip_head import CLIP_FILE, HeadParams, Windows, forward, head_onnx, report, sd_scale

log = logging.getLogger(__name__)

HELD_OUT_SHARE = (
    0.1  # the last tenth of the recorded phantoms: never trained on (spread calibration, figures)
)
WEIGHT_NAMES = ("proj_w", "proj_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b", "out_w", "out_b")
# head_weights' names for the torch module's parameters (models.clip_head._torch_head)
TORCH_NAMES = {
    "proj.1.weight": "proj_w", "proj.1.bias": "proj_b", "mlp.0.weight": "fc1_w", "mlp.0.bias": "fc1_b",
    "mlp.3.weight": "fc2_w", "mlp.3.bias": "fc2_b", "mlp.6.weight": "out_w", "mlp.6.bias": "out_b",
}  # fmt: skip


def head_weights_from_onnx(path: Path) -> dict[str, np.ndarray]:
    """The weights :func:`models.clip_head.head_onnx` wrote into a head file, by name."""
    import onnx
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    missing = [n for n in WEIGHT_NAMES if n not in found]
    if missing:
        raise ValueError(f"{path}: not a clip head written by models.clip_head (no {', '.join(missing)})")
    return {n: np.asarray(found[n], np.float32) for n in WEIGHT_NAMES}


def load_windows(*paths: Path) -> Windows:
    """Every window of one or more ``loop_windows`` files (DAgger's rounds, aggregated)."""
    if not paths:
        raise ValueError("no loop-window files given")
    parts = []
    for path in paths:
        with np.load(path) as d:
            parts.append({k: d[k] for k in d.files})
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Windows(
        data["features"].astype(np.float32), data["motion"], data["truth"], data["visible"],
        data["contact"], data["frame_correction"], data["group"],
    )  # fmt: skip


def split_by_phantom(w: Windows, share: float) -> tuple[Windows, Windows]:
    """(the rest, the last ``share`` of the phantoms): windows of one phantom never on both sides."""
    phantoms = np.unique(w.group)
    if len(phantoms) < 2:
        raise ValueError(f"windows of {len(phantoms)} phantom(s): need two or more to hold some out")
    cut = min(len(phantoms) - 1, max(1, round((1 - share) * len(phantoms))))
    held = np.isin(w.group, phantoms[cut:])
    return _part(w, ~held), _part(w, held)


def _part(w: Windows, sel: np.ndarray) -> Windows:
    return Windows(*(getattr(w, k)[sel] for k in Windows.__dataclass_fields__))


def loop_report(weights: dict[str, np.ndarray], scale: np.ndarray, w: Windows) -> dict[str, Any]:
    """Signs and 68% coverage of a head (numpy, as its ONNX graph computes) on windows with contact."""
    sel = _part(w, w.contact > 0.5)
    mean, sd = forward(weights, sel.features, sel.motion, scale)
    return report(mean, sd, sel)


def finetune(weights: dict[str, np.ndarray], w: Windows, params: HeadParams) -> dict[str, np.ndarray]:
    """Go on training a head from ``weights`` on ``w`` (torch: the train extra)."""
    import torch

    from models.clip_head import _torch_head, head_weights, train_head

    k, d = w.features.shape[1:]
    net = _torch_head(
        d, k, width=weights["fc1_w"].shape[0], proj=weights["proj_w"].shape[0], dropout=params.dropout
    )
    net.load_state_dict({t: torch.from_numpy(weights[n].copy()) for t, n in TORCH_NAMES.items()})
    return head_weights(train_head(w, params, net=net))


def write_finetuned(
    model_dir: Path, out: Path, weights: dict[str, np.ndarray], scale: np.ndarray, k: int
) -> None:
    """``model_dir`` copied to ``out`` with the new head and its spread scale (manifest re-hashed)."""
    import onnx

    from models.manifest import write_manifest

    manifest = json.loads((model_dir / "manifest.json").read_text())
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    onnx.save(head_onnx(weights, scale, k), str(out / CLIP_FILE))
    manifest["clip"]["sd_scale"] = [round(float(v), 3) for v in scale]
    files = list(manifest.pop("files"))
    write_manifest(out, manifest, files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="model folder with a clip head")
    p.add_argument(
        "--windows", type=Path, nargs="+", required=True, help="service.tools.evaluate.loop_windows files"
    )
    p.add_argument(
        "--finetune", type=Path, default=None, metavar="OUT", help="fine-tune and write a candidate here"
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    manifest = json.loads((args.model / "manifest.json").read_text())
    if "clip" not in manifest:
        p.error(f"{args.model}: the model has no clip head")
    weights = head_weights_from_onnx(args.model / manifest["clip"]["file"])
    scale = np.asarray(manifest["clip"]["sd_scale"], float)
    # Fine-tuned on 90% of the phantoms; the spread calibrated on half the rest, judged on the other half.
    train, held = split_by_phantom(load_windows(*args.windows), HELD_OUT_SHARE)
    cal, test = split_by_phantom(held, 0.5)
    results: dict[str, Any] = {
        "windows": {"train": len(train.truth), "calibrate": len(cal.truth), "test": len(test.truth)}
    }
    results["shipped"] = loop_report(weights, scale, test)
    if args.finetune:
        tuned = finetune(weights, train, HeadParams(epochs=args.epochs, lr=args.lr))
        cal = _part(cal, cal.contact > 0.5)
        both = [forward(tuned, cal.features, m, np.ones(6)) for m in (cal.motion, np.zeros_like(cal.motion))]
        new_scale = sd_scale(
            np.concatenate([b[0] for b in both]), np.concatenate([b[1] for b in both]),
            np.concatenate([cal.truth, cal.truth]),
        )  # fmt: skip
        results["finetuned"] = loop_report(tuned, new_scale, test)
        results["finetuned_sd_scale"] = [round(float(v), 3) for v in new_scale]
        write_finetuned(args.model, args.finetune, tuned, new_scale, train.features.shape[1])
        results["candidate"] = str(args.finetune)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
