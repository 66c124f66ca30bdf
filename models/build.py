"""`make model`: simulator frames → training → ONNX FP32 → INT8 (QDQ) → evaluation → manifest + card.

    python -m models.build [--out models/sonoguide-view/1.4.0] [--seed 1] [--quick]

Deterministic for a seed (see models/train.py for the one caveat: thread count and CPU kind).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from models import augment, dataset, guidance_calibration
from models.evaluate import latency_ms, metrics, run_onnx
from models.export import OPSET, export_fp32
from models.manifest import MIN_SERVICE_VERSION, input_specs, model_card, output_specs, write_manifest
from models.quantize import quantize_int8
from models.real_images import real_image_checks
from models.train import TORCH_THREADS, TrainParams, prepare_images, prepare_scalars, torch_version, train

log = logging.getLogger("models.build")
REPO = Path(__file__).resolve().parents[1]
NAME, VERSION = "sonoguide-view", "1.4.0"
INT8_FILE, FP32_FILE, CARD_FILE = "model.int8.onnx", "reference.fp32.onnx", "MODEL_CARD.md"
GOALS = {"gain_mae_db": 2.0, "depth_within_one_step": 0.95, "direction_correct": 0.90}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "models" / NAME / VERSION)
    p.add_argument("--cache", type=Path, default=REPO / "build" / "model-data")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-phantoms", type=int, default=2600)
    p.add_argument("--per-phantom", type=int, default=8)
    p.add_argument("--eval-phantoms", type=int, default=300)
    p.add_argument("--eval-per-phantom", type=int, default=4)
    p.add_argument("--epochs", type=int, default=TrainParams.epochs)
    p.add_argument("--calibration-frames", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="processes rendering frames (result is the same)")
    p.add_argument("--quick", action="store_true", help="tiny run to check the pipeline (not for shipping)")
    p.add_argument(
        "--requantize",
        action="store_true",
        help="keep the FP32 export already in --out (same seed and data) and redo quantization, evaluation, manifest",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.quick:
        args.train_phantoms, args.eval_phantoms, args.epochs = 60, 30, 2
    t0 = time.monotonic()
    lo = dataset.TRAIN_SEEDS[0]
    if args.train_phantoms > dataset.TRAIN_SEEDS[1] - lo + 1:
        print("too many training phantoms for the training seed range", file=sys.stderr)
        return 2
    train_seeds = range(lo, lo + args.train_phantoms)
    eval_seeds = range(dataset.EVAL_SEEDS[0], dataset.EVAL_SEEDS[0] + args.eval_phantoms)
    frames = dataset.cached_generate(args.cache, train_seeds, args.per_phantom, 128, args.workers)
    held_out = dataset.cached_generate(args.cache, eval_seeds, args.eval_per_phantom, 128, args.workers)
    log.info(
        "data: %d training, %d held-out frames (%.0f s)", len(frames), len(held_out), time.monotonic() - t0
    )

    params = TrainParams(seed=args.seed, epochs=args.epochs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.requantize:
        fp32 = out / FP32_FILE
        if not fp32.is_file():
            print(f"--requantize needs {fp32} from an earlier build", file=sys.stderr)
            return 2
        log.info("reusing %s (not retrained)", fp32)
    else:
        net = train(frames, params)
        log.info("trained (%.0f s)", time.monotonic() - t0)
        fp32 = export_fp32(net, out / FP32_FILE)
    calib = frames.subset(
        np.random.default_rng([args.seed, 0xCA1]).choice(len(frames), args.calibration_frames, replace=False)
    )
    qsettings = quantize_int8(
        fp32, out / INT8_FILE, prepare_images(calib.images), prepare_scalars(calib.depth_mm, calib.freq_mhz)
    )

    import onnxruntime as ort

    result_fp32 = metrics(held_out, run_onnx(fp32, held_out))
    result_int8 = metrics(held_out, run_onnx(out / INT8_FILE, held_out))
    # Alternate the two so a busy machine slows both alike.
    lat: dict[str, list[dict[str, float]]] = {"fp32": [], "int8": []}
    for _ in range(3):
        lat["fp32"].append(latency_ms(fp32, runs=100))
        lat["int8"].append(latency_ms(out / INT8_FILE, runs=100))
    latency = {k: min(v, key=lambda d: d["median_ms"]) for k, v in lat.items()}
    log.info("FP32 %s", result_fp32)
    log.info("INT8 %s", result_int8)
    log.info("latency %s", latency)
    real = real_image_checks(out / INT8_FILE)
    log.info("real scanner images %s", real)

    fields = {
        "name": NAME,
        "version": VERSION,
        "description": "judges a B-mode frame: gain error, best depth, target visibility, view quality, contact, pose correction",
        "model_file": INT8_FILE,
        "reference_file": FP32_FILE,
        "precision": "int8",
        "inputs": input_specs(),
        "outputs": output_specs(),
        "opset": OPSET,
        "onnxruntime_tested": [ort.__version__],
        "quantization": qsettings,
        "min_service_version": MIN_SERVICE_VERSION,
        "evaluation": {
            "frames": len(held_out),
            "phantoms": args.eval_phantoms,
            "seeds": [eval_seeds.start, eval_seeds.stop - 1],
            "goals": GOALS,
            "int8_tolerance": {"rates_points": 0.01, "gain_mae_db": 0.25},
            "fp32": result_fp32,
            "int8": result_int8,
            "latency": {**latency, "batch": 1, "intra_op_threads": 1, "provider": "CPUExecutionProvider"},
            "real_images": real,
        },
        "training": {
            "description": (
                f"{len(frames)} frames from {args.train_phantoms} seeded phantoms ({args.per_phantom} each; presets "
                f"{', '.join(dataset.PRESET_ORDER)} by seed mod 3); poses {dataset.POSE_KIND_PROBS} "
                "(near/far from the standard view, light contact, in air); depth a preset step (half the time within "
                "one step of the best), frequency a preset value, TGC randomized in 30%; gain = best gain + "
                "N(0, 4 dB) or U(−20, 20) dB, clamped to the preset range. Labels from sim.truth.ground_truth."
            ),
            "train_seeds": [train_seeds.start, train_seeds.stop - 1],
            "train_seed_range": list(dataset.TRAIN_SEEDS),
            "eval_seeds": [eval_seeds.start, eval_seeds.stop - 1],
            "eval_seed_range": list(dataset.EVAL_SEEDS),
            "closed_loop_seed_min": dataset.CLOSED_LOOP_SEED_MIN,
            "seed": args.seed,
            "epochs": params.epochs,
            "batch": params.batch,
            "torch_threads": TORCH_THREADS,
            "torch_version": torch_version(),
            "augmentations": [fn.__name__ for fn, _ in augment.PIPELINE]
            + ["shift_gain (label moved with it)"],
            "calibration": f"{args.calibration_frames} training frames (seed-chosen)",
            "command": "make model",
        },
    }
    (out / CARD_FILE).write_text(model_card(fields))
    write_manifest(out, fields, [INT8_FILE, FP32_FILE, CARD_FILE])
    # The target belief's calibration of this model (prior, correction and view-score models; ~30 s).
    guidance_calibration.write_into_manifest(out, guidance_calibration.calibrate(out))
    log.info("wrote %s (%.0f s in all)", out, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
