"""`sonoguide demo [--duration S] [--broker-port P]`: the whole service on the virtual bench, no config.

What runs (everything real, nothing mocked):

- a mosquitto broker on a free (or the given) loopback port (:class:`~service.tools.local_broker.LocalBroker`);
- the reference probe emulator on a pseudo-terminal, rendering the simulator's abdomen phantom; its
  probe pose is held by a simulated novice (``sim.novice.NoviceUser``) who follows the published
  guidance (``service.policy.guidance.instruction_to_motion``), knowing, as a person does, where the
  patient's head is;
- the daemon as systemd runs it: ``python -m service run --config <generated config>``;
- the live view of the device's topics (:mod:`service.tools.view`), plus the simulator's ground truth;
- the reference display (service/display) served on loopback: the demo prints its address, to open
  in a browser while the demo runs (the broker has a WebSocket listener for it).

It starts with the gain ~15 dB too low and the shallowest depth, so auto-tuning shows. Ctrl-C,
SIGTERM or ``--duration`` end it cleanly: the daemon publishes ``stopped``, then the broker stops, the
pty closes and the temporary folder (config, logs) is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEVICE_ID = "demo"
PRESET = "abdomen"
NOVICE_STEP_S = 1 / 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: Ctrl-C)")
    parser.add_argument("--broker-port", type=int, default=None, help="loopback port (default: a free one)")
    parser.add_argument("--seed", type=int, default=7, help="phantom, start pose and novice seed (default 7)")
    parser.add_argument("--noise", type=float, default=0.3, help="novice imprecision 0..1 (default 0.3)")
    parser.add_argument("--plain", action="store_true", help="one line a second, even on a terminal")
    parser.add_argument(
        "--display-port",
        type=int,
        default=0,
        help="port of the reference display's page (default: a free one)",
    )
    parser.add_argument(
        "--captures", type=Path, default=None,
        help="keep the DICOM captures in this folder (default: a temporary one, removed at the end)",
    )  # fmt: skip


def demo_config(
    probe_port: str,
    broker_port: int,
    camera_socket: str = "",
    calibration: str = "",
    captures_dir: str = "",
    pacs_port: int | None = None,
    pacs_aet: str = "",
) -> str:
    """The daemon's config for the bench (the contract in docs/architecture.md): the probe emulator's
    pty; when given, the camera emulator's socket and the calibration file it is calibrated into, the
    captures' folder and the local PACS."""
    captures = f'\n[captures]\ndir = "{captures_dir}"\nretention_days = 1.0\n' if captures_dir else ""
    if pacs_port is not None:
        captures += (
            f'\n[pacs]\nhost = "127.0.0.1"\nport = {pacs_port}\ncalled_ae = "{pacs_aet}"\n'
            "retry_initial_s = 1.0\nretry_max_s = 5.0\n"
        )
    from service.tools.benchmark.procs import camera_section

    camera = camera_section(camera_socket, calibration)
    return (
        f'[device]\nid = "{DEVICE_ID}"\n\n[probe]\nport = "{probe_port}"\n\n[camera]\n{camera}\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n\n[auto]\ngain = true\ndepth = true\n'
        "manual_pause_s = 10.0\n" + captures
    )


class SimulatedNovice:
    """Holds the probe: every step, the newest fresh instruction → probe-frame motion → ``follow``."""

    def __init__(self, source: Any, start_pose: Any, noise: float, seed: int, guidance: Any) -> None:
        from service.tools.evaluate.episode import Reader
        from sim.novice import NoviceUser

        self.source = source
        self.pose = start_pose  # sim.types.Pose; read by the emulator thread (a reference swap is atomic)
        self.user = NoviceUser(noise, seed, source.phantom)
        self.reader = Reader()
        self.guidance = guidance  # () -> newest fresh guidance message or None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="novice", daemon=True)

    def emulator_pose(self, t: float) -> Any:
        return self.source.emulator_pose(self.pose)

    def motion(self, message: dict[str, Any] | None) -> tuple[Any, Any] | None:
        """The probe-frame motion the newest message asks for, read as the eval's novice reads it
        (new words at once, the number every second: a request changed every frame would restart
        the hand's reaction each frame and freeze it)."""
        if message is None:
            return None
        # A person sees where the patient's head is: the true orientation names the directions.
        return self.reader.read(message, time.monotonic(), self.pose.rotation_matrix())

    def start(self) -> SimulatedNovice:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.pose = self.user.follow(self.pose, self.motion(self.guidance()), NOVICE_STEP_S)
            except Exception:  # a bad message must not freeze the hand for the rest of the demo
                log.exception("novice step failed")
            next_t += NOVICE_STEP_S
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def truth_line(self) -> str:
        from sim.truth import pose_error

        distance, angle = pose_error(self.pose, self.source.phantom.target_pose)
        return f"simulated patient: the probe is {distance:.0f} mm and {angle:.0f} deg from the standard view"


def _start_settings(source: Any, start_pose: Any) -> dict[str, float]:
    """Gain ~15 dB below the best for the start view, the shallowest depth step."""
    from sim.truth import ground_truth
    from sim.types import ImagingSettings

    p = source.preset
    depth = float(min(p.depth_steps_mm))
    settings = ImagingSettings(p.default.gain_db, depth, p.default.freq_mhz)
    best = ground_truth(source.phantom, start_pose, settings).best_gain_db
    lo, hi = p.gain_range_db
    return {"gain_db": float(min(max(round(best - 15.0), lo), hi)), "depth_mm": depth}


def _captures_line(folder: Path, pacs: Any) -> str:
    """How many captures are DICOM files on the device, and how many reached the local PACS."""
    outbox = folder / "outbox"
    deadline = time.monotonic() + 10.0
    while pacs is not None and any(outbox.glob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the sender is at it
    files = [p for sub in ("outbox", "sent") for p in (folder / sub).glob("*.dcm")]
    line = f"{len(files)} DICOM capture(s) in {folder}"
    if pacs is not None:
        try:
            line += f", {len(pacs.instances())} in the local PACS"
        except Exception as e:
            line += f" (PACS unreadable: {e})"
    return line


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.emulator import CallablePoseSource, ProbeEmulator, PtyEndpoint, SimImageSource
    from firmware_bridge.emulator.state import Capabilities
    from service.daemon.logsetup import setup_logging
    from service.tools.display_server import DisplayServer
    from service.tools.local_broker import BrokerError, LocalBroker
    from service.tools.view import LiveView
    from sim.novice import random_start_pose

    if args.duration < 0 or not 0.0 <= args.noise <= 1.0:
        print("sonoguide demo: --duration must be >= 0 and --noise within 0..1", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sonoguide-demo-"))
    # This process's own logs (emulator, novice) go to a file: the terminal belongs to the view.
    log_file = (work / "demo.log").open("w")
    setup_logging(logging.INFO, stream=log_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cleanup: list[Any] = []
    daemon: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        try:
            broker = LocalBroker(
                port=args.broker_port, workdir=work / "broker", name="demo", websocket=True
            ).start()
        except BrokerError as e:
            print(f"sonoguide demo: {e}", file=sys.stderr)
            return 1
        cleanup.append(broker.close)
        try:
            display = DisplayServer(port=args.display_port).start()
        except OSError as e:
            print(
                f"sonoguide demo: cannot serve the display on port {args.display_port}: {e}", file=sys.stderr
            )
            return 1
        cleanup.append(display.stop)
        display_url = display.page_url(broker.ws_url, DEVICE_ID)
        print(f"display: {display_url}", flush=True)

        source = SimImageSource(PRESET, args.seed)
        start_pose = random_start_pose(source.phantom, args.seed)
        initial = _start_settings(source, start_pose)
        view = LiveView(
            "127.0.0.1", broker.port, DEVICE_ID, title="sonoguide demo", live=False if args.plain else None
        )
        cleanup.append(view.close)
        if view.live:  # the full-screen view hides the line printed above; the plain one keeps it
            view.state.extra.append(f"display: {display_url}")
        novice = SimulatedNovice(source, start_pose, args.noise, args.seed, view.snapshot).start()
        cleanup.append(novice.stop)
        endpoint = PtyEndpoint()
        cleanup.append(endpoint.close)
        caps = Capabilities(**source.capabilities())
        emulator = ProbeEmulator(
            endpoint,
            source,
            CallablePoseSource(novice.emulator_pose),
            caps,
            seed=args.seed,
            initial_params=initial,
        ).start()
        cleanup.append(emulator.stop)

        camera_socket = calibration = ""
        if importlib.util.find_spec("service.tracking") is not None:  # camera tracking is in this build
            from firmware_bridge.emulator.camera import CameraEmulator

            camera_socket, calibration = str(work / "camera.sock"), str(work / "camera-calibration.json")
            # The probe is off the patient while the camera calibrates (it would hide a sticker).
            probe_placed = threading.Event()
            camera = CameraEmulator(
                camera_socket,
                source.phantom,
                lambda: novice.pose if probe_placed.is_set() else None,
                args.seed,
            ).start()
            cleanup.append(camera.stop)
        else:
            view.state.extra.append("camera: none (camera tracking is not in this build)")
        # The automatic captures become DICOM files, sent to a real local PACS when Orthanc is installed.
        from service.tools.local_pacs import LocalPacs, PacsError

        captures_dir = Path(args.captures or work / "captures").resolve()
        pacs: LocalPacs | None = None
        try:
            pacs = LocalPacs(workdir=work / "pacs", aet="DEMOPACS", name="demo-pacs").start()
            cleanup.append(pacs.close)
            view.state.extra.append(f"PACS: Orthanc on 127.0.0.1:{pacs.dicom_port} (HTTP {pacs.http_port})")
        except PacsError:
            view.state.extra.append("PACS: none (Orthanc not installed): captures stay on the device")
        config = work / "config.toml"
        config.write_text(
            demo_config(
                endpoint.path,
                broker.port,
                camera_socket,
                calibration,
                str(captures_dir),
                pacs.dicom_port if pacs else None,
                pacs.aet if pacs else "",
            )
        )
        repo = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
        if camera_socket:
            # As a technician does at the bedside: calibrate the camera on the skin stickers first.
            done = subprocess.run(
                [sys.executable, "-m", "service", "calibrate-camera", "--config", str(config)],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            line = (done.stdout or done.stderr).strip().splitlines()
            view.state.extra.append(f"camera: {line[-1] if line else 'calibration said nothing'}")
            print(f"camera: {line[-1] if line else ''}", flush=True)
            if done.returncode != 0:
                print(f"sonoguide demo: camera calibration failed:\n{done.stderr}", file=sys.stderr)
                return 1
            probe_placed.set()
        daemon_log = work / "daemon.log"
        with daemon_log.open("wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "service", "run", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        view.state.extra.append("")
        truth_at = len(view.state.extra) - 1

        def watch_daemon() -> None:
            while not stop.wait(0.2):
                line = novice.truth_line()
                with view.lock:
                    view.state.extra[truth_at] = line
                if daemon is not None and daemon.poll() is not None:
                    stop.set()

        threading.Thread(target=watch_daemon, name="demo-watch", daemon=True).start()
        view.run(stop, args.duration or None)
        if daemon.poll() is not None:
            print(
                f"sonoguide demo: the daemon exited ({daemon.returncode}):\n{_tail(daemon_log)}",
                file=sys.stderr,
            )
            status = 1
        else:
            summary = (
                f"demo over: {view.state.guidance_count} guidance messages, {view.state.captures} captures; "
                + novice.truth_line()
                + "; "
                + _captures_line(captures_dir, pacs)
            )
            print(summary, flush=True)
    finally:
        stop.set()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()  # SIGTERM: the daemon publishes `stopped` before the broker goes
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                status = status or 1
        for undo in reversed(cleanup):
            with contextlib.suppress(Exception):
                undo()
        log_file.close()
        shutil.rmtree(work, ignore_errors=True)
    return status
