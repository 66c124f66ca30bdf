"""Point 10 of issue 16: each platform gets the ONNX Runtime (and RealSense) build meant for it.

The project's declared requirements (pyproject.toml, what the wheel's Requires-Dist carries: the
plain dependencies plus each extra's under ``extra == "<name>"``) are evaluated with
``packaging.markers`` for each target; the install-time choice of extra and the "GPU present, model
on the CPU" sentence are pure functions fed the device nodes and provider lists; doctor's provider
claims are checked against the daemon's own check on this machine's real ONNX Runtime.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from service.daemon.accelerator import cpu_despite_gpu, gpu_devices
from service.tools.onnxruntime_extra import choose_extra

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ORT = {"onnxruntime", "onnxruntime-gpu"}

X86 = {"platform_machine": "x86_64", "sys_platform": "linux", "platform_release": "6.8.0-45-generic"}
JETSON = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_release": "5.15.136-tegra"}


def installed_by(env: dict[str, str], extras: tuple[str, ...]) -> set[str]:
    """The distribution names pip would install for ``sonoguide[extras]`` on ``env``, as pip reads
    the wheel's metadata: plain requirements with extra "", each extra's with its own name."""
    environment = {**default_environment(), "python_version": "3.10", "python_full_version": "3.10.12", **env}
    names: set[str] = set()
    declared = [(r, "") for r in PROJECT["dependencies"]]
    declared += [(r, e) for e in extras for r in PROJECT["optional-dependencies"][e]]
    for text, extra in declared:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({**environment, "extra": extra}):
            names.add(re.sub(r"[-_.]+", "-", req.name).lower())
    return names


@pytest.mark.parametrize(
    ("env", "extras", "expected_ort", "realsense"),
    [
        (X86, ("cpu",), {"onnxruntime"}, True),  # what install.sh picks without a GPU
        (X86, ("gpu",), {"onnxruntime-gpu"}, True),  # with one
        (X86, (), set(), True),  # the plain package never brings a build that would sit under another
        (JETSON, (), set(), False),  # NVIDIA's wheel and the system librealsense, unshadowed
        (JETSON, ("cpu",), set(), False),
        (JETSON, ("gpu",), set(), False),
    ],
)
def test_each_platform_gets_its_own_onnx_runtime(
    env: dict[str, str], extras: tuple[str, ...], expected_ort: set[str], realsense: bool
) -> None:
    names = installed_by(env, extras)
    assert names & ORT == expected_ort, names
    assert ("pyrealsense2" in names) == realsense, names
    assert {"numpy", "paho-mqtt", "pyserial"} <= names


def test_no_extra_combination_puts_both_builds_in_one_venv() -> None:
    for extras in ((), ("cpu",), ("gpu",), ("dev",), ("dev", "cpu"), ("dev", "gpu"), ("train", "gpu")):
        for env in (X86, JETSON):
            assert len(installed_by(env, extras) & ORT) <= 1, (env, extras)


def test_the_install_time_choice_per_machine() -> None:
    nv = ["/dev/nvidia0", "/dev/nvidiactl"]
    assert choose_extra("x86_64", [], []) == ("cpu", [])
    assert choose_extra("x86_64", nv, []) == ("gpu", [])
    assert choose_extra("aarch64", ["/dev/nvmap"], ["onnxruntime-gpu"]) == ("", [])
    # A build already there is kept (never a second one on top); the CPU one on a GPU machine swapped.
    assert choose_extra("x86_64", [], ["onnxruntime_gpu"]) == ("gpu", [])
    assert choose_extra("x86_64", [], ["onnxruntime"]) == ("cpu", [])
    assert choose_extra("x86_64", nv, ["onnxruntime"]) == ("gpu", ["onnxruntime"])
    assert choose_extra("x86_64", [], ["onnxruntime", "onnxruntime-gpu"]) == ("gpu", ["onnxruntime"])


def test_install_sh_and_make_setup_use_the_choice() -> None:
    install = (REPO / "systemd/install.sh").read_text()
    makefile = (REPO / "Makefile").read_text()
    for text in (install, makefile):
        assert "-m service.tools.onnxruntime_extra" in text
    assert '"$SRC${ort_extra:+[$ort_extra]}"' in install
    assert 'pip install --quiet --upgrade "$SRC"\n' not in install


def test_gpu_device_nodes_are_found(tmp_path: Path) -> None:
    assert gpu_devices(tmp_path) == []
    for name in ("nvidia0", "nvidiactl", "nvmap", "ttyACM0"):
        (tmp_path / name).touch()
    assert gpu_devices(tmp_path) == [str(tmp_path / "nvidia0"), str(tmp_path / "nvmap")]


CPU = "CPUExecutionProvider"
FULL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]


def test_a_gpu_with_the_model_on_the_cpu_is_said_with_the_reason() -> None:
    nv = ["/dev/nvidia0"]
    assert cpu_despite_gpu([], [CPU], CPU, {}) == ""  # no GPU: nothing to say
    assert cpu_despite_gpu(nv, FULL, "CUDAExecutionProvider", {}) == ""
    cpu_build = cpu_despite_gpu(nv, [CPU], CPU, {})
    assert "/dev/nvidia0" in cpu_build and "no GPU provider" in cpu_build
    libs = {"CUDAExecutionProvider": "libcublasLt.so.12: cannot open shared object file"}
    failing = cpu_despite_gpu(nv, FULL, CPU, libs)
    assert "cannot load" in failing and "libcublasLt.so.12" in failing
    assert "not configured" in cpu_despite_gpu(nv, FULL, CPU, {})


def _shipped_model_file() -> Path:
    from service.daemon.onnx_model import read_manifest, shipped_model_dir

    folder = shipped_model_dir()
    return folder / str(read_manifest(folder)["model_file"])


def test_doctor_claims_tensorrt_only_where_run_can_load_it(tmp_path: Path) -> None:
    from service.daemon.onnx_model import usable_providers
    from service.tools.doctor_checks import check_model_runtime

    usable, unusable = usable_providers(["tensorrt", "cuda", "cpu"])
    result = check_model_runtime(_shipped_model_file(), ["tensorrt", "cuda", "cpu"], dev=tmp_path)
    assert result.ok, result
    assert ("TensorRT loads here" in result.detail) == ("TensorrtExecutionProvider" in usable), result
    if "TensorrtExecutionProvider" in unusable and "not in this" not in unusable["TensorrtExecutionProvider"]:
        assert "TensorRT is in this build but cannot load here" in result.detail, result
    assert "TensorRT available" not in result.detail  # the old claim, made from the build's list alone


def test_doctor_fails_loudly_when_a_gpu_is_present_and_the_model_runs_on_the_cpu(tmp_path: Path) -> None:
    from service.tools.doctor_checks import check_model_runtime

    (tmp_path / "nvidia0").touch()
    result = check_model_runtime(_shipped_model_file(), ["tensorrt", "cuda", "cpu"], dev=tmp_path)
    on_cpu = "runs on CPUExecutionProvider" in result.detail
    assert result.ok != on_cpu, result
    if on_cpu:
        assert "a GPU is present" in result.detail and "sonoguide[gpu]" in result.fix, result
