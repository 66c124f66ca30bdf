"""The shipped ONNX model behind the :class:`service.daemon.inference.Model` seam.

Loading goes by the model folder's ``manifest.json``: every listed file's sha256 is checked before
anything is loaded (a changed file is an error naming it), inputs are prepared the way the manifest
says (resize, normalisation, scalar scaling), outputs are read by the manifest's names and checked
against the units :class:`ModelOutput` carries. Execution providers by preference: TensorRT (with
an engine cache) → CUDA → CPU, only those this ONNX Runtime build can actually load; the one the
session got is logged. One warm-up inference runs at load.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.devicelog import device_logger
from models.imageprep import resize
from service.daemon.accelerator import PROVIDER_NAMES, cpu_despite_gpu, gpu_devices
from service.model_store.compat import OUTPUT_UNITS
from service.model_store.golden import clip_golden_motion
from service.policy.clip_window import ClipContract, still_clip
from service.seams import ModelOutput

log = logging.getLogger(__name__)

MODELS_ROOT = Path(__file__).resolve().parents[2] / "models"
# ModelOutput field -> the unit the manifest must declare for it (the model contract, one place).
EXPECTED_UNITS = OUTPUT_UNITS
_PROVIDER_LIBS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


class ModelLoadError(RuntimeError):
    """The model folder cannot be used; the message names the file and the problem."""


def shipped_model_dir(root: Path = MODELS_ROOT) -> Path:
    """The newest ``<name>/<version>/`` folder with a manifest under ``models/``."""
    manifests = sorted(root.glob("*/*/manifest.json"), key=lambda p: _version_key(p.parent.name))
    if not manifests:
        raise ModelLoadError(f"no model is installed in {root} (run `make model`)")
    return manifests[-1].parent


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked for the keys the service needs, with every file's hash verified."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: not a model folder") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    for key in ("name", "version", "model_file", "files", "inputs", "outputs"):
        if key not in manifest:
            raise ModelLoadError(f"{path} lacks the key {key!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or manifest["model_file"] not in files:
        raise ModelLoadError(
            f"{path}: 'files' must list the model file {manifest['model_file']!r} with its sha256"
        )
    for name, expected in files.items():
        f = folder / name
        if not f.is_file():
            raise ModelLoadError(f"model file {f} listed in the manifest is missing")
        if sha256_file(f) != str(expected).lower():
            raise ModelLoadError(
                f"model file {f} does not match its sha256 in the manifest (damaged or changed); "
                "reinstall the model version"
            )
    units = {o["name"]: o.get("unit") for o in manifest["outputs"]}
    for name, unit in EXPECTED_UNITS.items():
        if units.get(name) != unit:
            raise ModelLoadError(
                f"{path}: output {name!r} must be declared in {unit!r}, got {units.get(name)!r}"
            )
    return manifest


def _loadable(provider: str, capi_dir: Path) -> tuple[bool, str]:
    """Whether the provider's shared library and its dependencies (CUDA, cuDNN, TensorRT) load here."""
    lib = _PROVIDER_LIBS.get(provider)
    if lib is None:
        return True, ""
    try:
        ctypes.CDLL(str(capi_dir / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi_dir / lib))
    except OSError as exc:
        # Only a missing library is a sure "no" (no CUDA/TensorRT here); anything else ONNX Runtime
        # itself may still resolve, so let the session decide.
        if "cannot open shared object file" in str(exc):
            return False, str(exc)
    return True, ""


def usable_providers(wanted: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The ONNX Runtime names of ``wanted`` ("tensorrt", "cuda", "cpu") that can run here, in order,
    and why each other one cannot (not in this build, or its libraries do not load). The one check
    behind both ``run`` and ``doctor``, so they never disagree about a provider."""
    import onnxruntime as ort

    unknown = [w for w in wanted if w not in PROVIDER_NAMES]
    if unknown:
        raise ModelLoadError(f"unknown execution providers {unknown}; choose from {list(PROVIDER_NAMES)}")
    available = set(ort.get_available_providers())
    capi = Path(ort.__file__).parent / "capi"
    usable: list[str] = []
    unusable: dict[str, str] = {}
    for w in wanted:
        name = PROVIDER_NAMES[w]
        if name not in available:
            unusable[name] = "not in this ONNX Runtime build"
            continue
        ok, why = _loadable(name, capi)
        if ok:
            usable.append(name)
        else:
            unusable[name] = why
    return usable, unusable


def choose_providers(wanted: Sequence[str], engine_cache: str | Path | None) -> list[Any]:
    """ONNX Runtime provider list in ``wanted``'s order ("tensorrt", "cuda", "cpu"), only usable ones;
    CPU is always appended as the last resort."""
    usable, unusable = usable_providers(wanted)
    for name, why in unusable.items():
        log.info("execution provider %s cannot run here: %s", name, why)
    chosen: list[Any] = []
    for name in usable:
        if name == "TensorrtExecutionProvider":
            opts: dict[str, Any] = {"trt_fp16_enable": True, "trt_int8_enable": True}
            if engine_cache:
                Path(engine_cache).mkdir(parents=True, exist_ok=True)
                opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache)}
            chosen.append((name, opts))
        else:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxModel:
    """An ONNX Runtime session over one model version folder (implements ``service.daemon.inference.Model``)."""

    def __init__(
        self,
        folder: Path,
        providers: Sequence[str] = ("tensorrt", "cuda", "cpu"),
        engine_cache: str | Path | None = None,
        threads: int = 1,
        model_file: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.name = str(self.manifest["name"])
        self.version = str(self.manifest["version"])
        self.log = device_logger(__name__, f"model:{self.name}-{self.version}")
        image_spec, scalar_spec = self.manifest["inputs"]
        self._image_name = image_spec["name"]
        self._height, self._width = (int(v) for v in image_spec["shape"][-2:])
        norm = image_spec["normalisation"]
        self._scale, self._mean, self._std = float(norm["scale"]), float(norm["mean"]), float(norm["std"])
        self._scalar_name = scalar_spec["name"]
        self._scalar_fields = [(f["name"], float(f["scale"])) for f in scalar_spec["fields"]]
        if {n for n, _ in self._scalar_fields} - {"depth_mm", "freq_mhz", "gain_db"}:
            raise ModelLoadError(f"{self.folder}/manifest.json: unknown scalar inputs {self._scalar_fields}")
        self._output_names = [o["name"] for o in self.manifest["outputs"]]
        # A clip head (manifest ``clip``): the frame model also gives its features, the service keeps
        # them (service.policy.clip_window) and this head reads a window of them with the motion.
        self.clip_contract: ClipContract | None = None
        self._clip: Any = None
        clip = self.manifest.get("clip")
        if clip is not None:
            try:
                self.clip_contract = ClipContract.from_manifest(clip)
            except ValueError as exc:
                raise ModelLoadError(f"{self.folder}/manifest.json: {exc}") from None
            if clip.get("features_output") not in self._output_names:
                raise ModelLoadError(
                    f"{self.folder}/manifest.json: the clip head reads the output "
                    f"{clip.get('features_output')!r}, which the model does not declare"
                )
            if clip.get("file") not in self.manifest["files"]:
                raise ModelLoadError(
                    f"{self.folder}/manifest.json: the clip head file must be listed in 'files'"
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        chosen = choose_providers(providers, engine_cache)
        self.providers_in_build = list(ort.get_available_providers())
        self.providers_unusable = usable_providers(providers)[1]
        # model_file: another file the manifest lists (the FP32 reference, for golden vectors)
        model_path = self.folder / (model_file or self.manifest["model_file"])
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=chosen)
        except Exception as exc:  # ORT raises its own C++ exception types
            raise ModelLoadError(f"ONNX Runtime cannot load {model_path}: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if clip is not None:
            try:
                self._clip = ort.InferenceSession(str(self.folder / clip["file"]), options, providers=chosen)
            except Exception as exc:  # ORT raises its own C++ exception types
                raise ModelLoadError(
                    f"ONNX Runtime cannot load {self.folder / clip['file']}: {exc}"
                ) from None
        self.log.info("loaded %s on %s (asked for %s)", model_path.name, self.provider, ", ".join(providers))
        self.gpu_warning = cpu_despite_gpu(
            gpu_devices(), self.providers_in_build, self.provider, self.providers_unusable
        )
        if self.gpu_warning:
            self.log.warning("%s", self.gpu_warning)
        self.warmup()

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.run(np.zeros((self._height, self._width), np.uint8), 100.0, 3.5, 30.0)
        self.log.info("warm-up inference %.1f ms", 1000 * (time.perf_counter() - t0))

    def prepare(
        self, image: np.ndarray, depth_mm: float, freq_mhz: float, gain_db: float = 0.0
    ) -> dict[str, np.ndarray]:
        """The session inputs for one frame: resized and normalised as the manifest says."""
        img = np.asarray(image)
        if img.ndim != 2 or img.size == 0:
            raise ValueError(f"expected a grey (H, W) image, got shape {img.shape}")
        if not (np.isfinite(depth_mm) and depth_mm > 0 and np.isfinite(freq_mhz) and freq_mhz > 0):
            raise ValueError(f"depth_mm and freq_mhz must be positive, got {depth_mm}, {freq_mhz}")
        grey = resize(img, self._height, self._width)
        x = (grey * self._scale - self._mean) / self._std
        values = {"depth_mm": depth_mm, "freq_mhz": freq_mhz, "gain_db": gain_db}
        s = np.array([[values[n] * k for n, k in self._scalar_fields]], np.float32)
        return {self._image_name: x[None, None].astype(np.float32), self._scalar_name: s}

    def run(
        self, image: np.ndarray, depth_mm: float, freq_mhz: float, gain_db: float = 0.0
    ) -> dict[str, np.ndarray]:
        """Raw outputs by name (batch of one), in the manifest's units."""
        out = self.session.run(self._output_names, self.prepare(image, depth_mm, freq_mhz, gain_db))
        return {n: np.asarray(v)[0] for n, v in zip(self._output_names, out, strict=True)}

    def predict(self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float) -> ModelOutput:
        o = self.run(image, depth_mm, freq_mhz, gain_db)
        visible, contact = float(o["target_visible"][0]), float(o["contact"][0])

        def vec(a: np.ndarray) -> tuple[float, float, float]:
            return (float(a[0]), float(a[1]), float(a[2]))

        return ModelOutput(
            gain_error_db=float(o["gain_error_db"][0]),
            best_depth_mm=float(o["best_depth_mm"][0]),
            target_visible=visible,
            quality=float(o["quality"][0]),
            contact=contact,
            correction_mm=vec(o["correction_mm"]),
            correction_deg=vec(o["correction_deg"]),
            # The pose correction is only as good as the target is in view (and the probe on the skin).
            confidence=visible * contact,
            features=o[self.manifest["clip"]["features_output"]].astype(np.float32) if self._clip else None,
        )

    def golden_run(
        self, image: np.ndarray, depth_mm: float, freq_mhz: float, gain_db: float = 0.0
    ) -> dict[str, np.ndarray]:
        """``run``'s outputs and, with a clip head, the head's on a clip of this frame repeated with
        the golden tracked motion: what golden vectors record and the device checks."""
        out = self.run(image, depth_mm, freq_mhz, gain_db)
        if self.clip_contract is None:
            return out
        feats, _ = still_clip(self.clip_contract, out[self.manifest["clip"]["features_output"]])
        corr, sd = self.clip_correction(feats, clip_golden_motion(len(self.clip_contract.past_s)))
        return {
            **out,
            "clip_correction_mm": corr[:3], "clip_correction_deg": corr[3:],
            "clip_sd_mm": sd[:3], "clip_sd_deg": sd[3:],
        }  # fmt: skip

    def clip_correction(self, features: np.ndarray, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clip head's correction (6,) and its 1 sd (6,), mm and degrees, for one window."""
        if self._clip is None:
            raise RuntimeError(f"{self.name} {self.version} has no clip head")
        corr, sd = self._clip.run(["correction", "sd"], {"features": features, "motion": motion})
        return np.asarray(corr, float)[0], np.asarray(sd, float)[0]

    def with_clip(self, out: ModelOutput, features: np.ndarray, motion: np.ndarray) -> ModelOutput:
        """``out`` with the clip head's correction and 1 sd for this window in place of the frame's."""
        corr, sd = self.clip_correction(features, motion)
        return replace(
            out,
            correction_mm=(float(corr[0]), float(corr[1]), float(corr[2])),
            correction_deg=(float(corr[3]), float(corr[4]), float(corr[5])),
            correction_sd=(
                float(sd[0]),
                float(sd[1]),
                float(sd[2]),
                float(sd[3]),
                float(sd[4]),
                float(sd[5]),
            ),
            features=None,
        )

    def predict_still(
        self, image: np.ndarray, gain_db: float, depth_mm: float, freq_mhz: float
    ) -> ModelOutput:
        """One still image as the service reads a frame with no history: with a clip head, a clip of
        the image repeated and the motion unknown (a model without one: ``predict``)."""
        out = self.predict(image, gain_db, depth_mm, freq_mhz)
        if self.clip_contract is None or out.features is None:
            return out
        return self.with_clip(out, *still_clip(self.clip_contract, out.features))


def load_model(folder: str | Path = "", config: Any = None, threads: int = 1) -> OnnxModel:
    """The model in ``folder`` ("" = the newest shipped one), with ``config`` a ``ModelConfig``-like
    object (``providers``, ``engine_cache``) or None for TensorRT → CUDA → CPU without a cache."""
    path = Path(folder) if folder else shipped_model_dir()
    providers = tuple(getattr(config, "providers", ("tensorrt", "cuda", "cpu")))
    cache = getattr(config, "engine_cache", None)
    return OnnxModel(path, providers, cache, threads)


def bench_precisions(
    folder: str | Path = "", runs: int = 200, threads: int = 1
) -> dict[str, dict[str, float]]:
    """CPU latency (ms, batch 1) of the shipped INT8 model and its FP32 reference, measured alternately
    in blocks so a busy machine slows both alike: ``{"int8": {...}, "fp32": {...}}`` with median and p90;
    with a clip head also ``"clip_head"`` (one window, the frame's features reused). For ``sonoguide bench``."""
    import onnxruntime as ort

    path = Path(folder) if folder else shipped_model_dir()
    manifest = read_manifest(path)
    files = {"int8": manifest["model_file"], "fp32": manifest.get("reference_file")}

    def session(name: str) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path / name), opts, providers=["CPUExecutionProvider"])

    sessions = {key: session(name) for key, name in files.items() if name}
    shape = manifest["inputs"][0]["shape"]
    frame_feed = {
        manifest["inputs"][0]["name"]: np.random.default_rng(0).normal(0, 1, shape).astype(np.float32),
        manifest["inputs"][1]["name"]: np.ones(manifest["inputs"][1]["shape"], np.float32),
    }
    feeds = dict.fromkeys(sessions, frame_feed)
    clip = manifest.get("clip")
    if clip:
        sessions["clip_head"] = session(clip["file"])
        features = sessions["int8"].run([clip["features_output"]], frame_feed)[0]
        window, motion = still_clip(ClipContract.from_manifest(clip), features)
        feeds["clip_head"] = {"features": window, "motion": motion}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(10):  # warm-up
        for key, s in sessions.items():
            s.run(None, feeds[key])
    for _ in range(max(1, runs // 20)):
        for key, s in sessions.items():
            for _ in range(20):
                t0 = time.perf_counter()
                s.run(None, feeds[key])
                times[key].append(1000 * (time.perf_counter() - t0))
    return {
        k: {"median_ms": round(float(np.median(v)), 3), "p90_ms": round(float(np.percentile(v, 90)), 3)}
        for k, v in times.items()
    }
