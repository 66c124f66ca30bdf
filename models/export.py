"""ONNX export of the trained net (FP32, opset ≥ 17), outputs already in the manifest's units."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from models import net as netmod

OPSET = 17
INPUT_NAMES = ("image", "scalars")


def export_fp32(model: netmod.SonoNet, path: Path) -> Path:
    """Write ``path``; the batch axis is dynamic so evaluation can run batches."""
    wrapped = netmod.Exported(model).eval()
    image = torch.zeros(1, 1, netmod.INPUT_SIZE, netmod.INPUT_SIZE)
    scalars = torch.tensor([[100.0 * netmod.DEPTH_SCALE, 3.5 * netmod.FREQ_SCALE]])
    axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *netmod.OUTPUT_NAMES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter needs no onnxscript
        torch.onnx.export(
            wrapped,
            (image, scalars),
            str(path),
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(netmod.OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )
    return path
