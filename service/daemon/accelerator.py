"""Whether this machine has an NVIDIA GPU, and a loud sentence when it has one but the model runs on
the CPU (a missing CUDA library, the CPU wheel, a JetPack wheel shadowed by PyPI's). Standard library
only: ``service.tools.onnxruntime_extra`` runs it before any dependency is installed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# Config names of execution providers -> ONNX Runtime names (docs/architecture.md, [model] providers).
# Here, not beside the ONNX model, so the doctor can name them without importing ONNX Runtime.
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

# Desktop/server driver nodes, and the Jetson (Tegra) GPU's.
GPU_DEVICE_PATTERNS = ("nvidia[0-9]*", "nvhost-ctrl-gpu", "nvhost-gpu", "nvmap", "nvgpu")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def gpu_devices(dev: Path = Path("/dev")) -> list[str]:
    """The NVIDIA GPU device nodes under ``dev`` (empty: no GPU, or the driver is not loaded)."""
    found: set[str] = set()
    for pattern in GPU_DEVICE_PATTERNS:
        found.update(str(p) for p in dev.glob(pattern))
    return sorted(found)


def cpu_despite_gpu(
    devices: Iterable[str], in_build: Iterable[str], running: str, unusable: dict[str, str]
) -> str:
    """ "" when all is as it should be; otherwise why a GPU is here but ``running`` is the CPU.

    ``in_build``: ONNX Runtime's ``get_available_providers()``; ``unusable``: provider -> why it
    cannot run here (``onnx_model.usable_providers``)."""
    devices = list(devices)
    if not devices or running != "CPUExecutionProvider":
        return ""
    where = f"a GPU is present ({', '.join(devices[:3])}{', ...' if len(devices) > 3 else ''})"
    gpu_in_build = [p for p in GPU_PROVIDERS if p in set(in_build)]
    if not gpu_in_build:
        return (
            f"{where} but this ONNX Runtime has no GPU provider (the CPU build, or a PyPI wheel "
            "shadowing the platform's): the model runs on the CPU"
        )
    failing = [f"{p}: {unusable[p]}" for p in gpu_in_build if p in unusable]
    if failing:
        return f"{where} but the GPU providers cannot load ({'; '.join(failing)}): the model runs on the CPU"
    return f"{where} but the model runs on the CPU (GPU providers not configured in [model] providers?)"
