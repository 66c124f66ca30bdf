"""Which ONNX Runtime extra of the sonoguide package fits this machine: ``cpu``, ``gpu`` or none.

Used by ``systemd/install.sh`` and ``make setup`` (``python -m service.tools.onnxruntime_extra``, run
with the target venv's interpreter so it sees what is installed there). Standard library only.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Iterable
from importlib import metadata

from service.daemon.accelerator import gpu_devices

ORT_DISTS = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def choose_extra(machine: str, gpus: Iterable[str], installed: Iterable[str]) -> tuple[str, list[str]]:
    """(extra, distributions to remove first). ``extra`` is "" on aarch64 (a Jetson: NVIDIA's wheel,
    which no extra shadows). A build already installed is kept, so two never sit in one venv; the
    CPU build where a GPU is present is swapped for the GPU build."""
    if machine in ("aarch64", "arm64"):
        return "", []
    have = {_canonical(d) for d in installed}
    gpu_here = bool(list(gpus))
    if "onnxruntime-gpu" in have:
        return "gpu", ["onnxruntime"] if "onnxruntime" in have else []
    if "onnxruntime" in have:
        return ("gpu", ["onnxruntime"]) if gpu_here else ("cpu", [])
    return ("gpu" if gpu_here else "cpu"), []


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installed() -> list[str]:
    return [d.metadata["Name"] or "" for d in metadata.distributions()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.tools.onnxruntime_extra", description=__doc__)
    p.add_argument("--remove", action="store_true", help="print the distributions to uninstall first")
    args = p.parse_args(argv)
    extra, remove = choose_extra(platform.machine(), gpu_devices(), _installed())
    print(" ".join(remove) if args.remove else extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
