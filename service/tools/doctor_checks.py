"""The health checks behind ``sonoguide doctor``: each takes explicit targets and returns a CheckResult.

Every failing result says in plain words what is wrong (``detail``) and what to do (``fix``), for a
field technician rather than a developer. Heavy libraries are imported inside the checks that need them.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.daemon.accelerator import PROVIDER_NAMES

UDEV_RULES = "/etc/udev/rules.d/99-sonoguide.rules"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str  # what was found, in plain words
    fix: str = ""  # what to do (for a failure), or a hint (for a degraded pass)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# --- probe ----------------------------------------------------------------------------------------


def check_probe_port(port: str) -> CheckResult:
    """The probe's serial port exists, is a terminal we may read and write, and is not in use."""
    import serial  # pyserial: light, but only this check needs it

    name = "probe port"
    if not port:
        return CheckResult(name, False, "no probe port is configured", "set [probe] port in the config")
    if "://" in port:  # a pyserial URL (socket://, rfc2217://): the emulator or a network bridge
        try:
            serial.serial_for_url(port, timeout=0.5, do_not_open=False).close()
        except (serial.SerialException, ValueError, OSError) as exc:
            return CheckResult(
                name,
                False,
                f"cannot open probe URL {port}: {exc}",
                "check the address and that it is running",
            )
        return CheckResult(name, True, f"opened {port}")
    from firmware_bridge.portnames import STABLE_NAME, missing_port_reason, renumbered_name

    path = Path(port)
    reason = missing_port_reason(port)
    if reason:
        unstable = renumbered_name(port) or path.is_symlink()
        return CheckResult(
            name,
            False,
            reason if unstable else f"probe port {reason}: the probe is not connected or not recognised",
            "plug in the probe's USB cable; if it is plugged in, compare `lsusb` with the vendor/product "
            f"IDs in {UDEV_RULES} (it makes {STABLE_NAME}), then `udevadm control --reload-rules && "
            "udevadm trigger`",
        )
    st = path.stat()
    if not stat.S_ISCHR(st.st_mode):
        return CheckResult(
            name, False, f"{port} is not a serial device", "set [probe] port to the probe's serial device"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        return CheckResult(
            name,
            False,
            f"no permission to read and write {port} (mode {stat.filemode(st.st_mode)}, group id {st.st_gid})",
            f"the udev rule ({UDEV_RULES}) gives group sonoguide access; run doctor as the service user: "
            "sudo -u sonoguide sonoguide doctor",
        )
    try:
        # exclusive: a second opener (a running service, a terminal program) is reported, not disturbed.
        serial.Serial(port, timeout=0.2, exclusive=True).close()
    except (serial.SerialException, OSError) as exc:
        busy = "busy" in str(exc).lower() or "lock" in str(exc).lower()
        return CheckResult(
            name,
            False,
            f"cannot open {port}: {'it is in use by another program' if busy else exc}",
            "stop the other program (is the sonoguide service running? `systemctl stop sonoguide`)"
            if busy
            else "unplug and replug the probe; see `journalctl -k | tail` for USB errors",
        )
    return identify_probe(port)


def identify_probe(port: str) -> CheckResult:
    """The device on ``port`` answers HELLO with a compatible IDENTIFY (docs/protocol.md, §3)."""
    from firmware_bridge.errors import ProbeError, ProbeIncompatible
    from firmware_bridge.link import ProbeLink

    name = "probe port"
    link = ProbeLink(port, name="doctor", reconnect=False)
    try:
        link.start()
    except ProbeIncompatible as exc:
        return CheckResult(name, False, str(exc), "install matching host software or probe firmware")
    except (ProbeError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"{port} opens but no probe answers on it ({exc})",
            "check that this is the probe's port and that its firmware is running (replug it); "
            "`sonoguide probe info PORT` shows the exchange",
        )
    try:
        info = link.info
        assert info is not None
        return CheckResult(
            name,
            True,
            f"{port}: {info.model} serial {info.serial}, firmware {info.firmware}, "
            f"protocol {info.protocol[0]}.{info.protocol[1]}",
        )
    finally:
        link.stop()


# --- camera ---------------------------------------------------------------------------------------


def check_camera(source: str, serial_number: str = "", recording: str = "") -> CheckResult:
    """The configured camera source: a connected RealSense (by serial) or a readable recording."""
    name = "camera"
    if source == "none":
        return CheckResult(
            name, True, "camera disabled in the config (source = none): guidance uses the image only"
        )
    if source == "recording":
        return _check_recording(recording)
    if source != "realsense":
        return CheckResult(
            name,
            False,
            f"unknown camera source {source!r}",
            'set [camera] source to "none", "realsense" or "recording"',
        )
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        return CheckResult(
            name,
            False,
            f"the RealSense library is not installed ({exc})",
            "install pyrealsense2 (docs/jetson.md)",
        )
    try:
        devices = rs.context().query_devices()
        found = [d.get_info(rs.camera_info.serial_number) for d in devices]
    except RuntimeError as exc:
        return CheckResult(
            name, False, f"cannot list RealSense cameras: {exc}", "replug the camera; check `lsusb`"
        )
    if not found:
        return CheckResult(
            name,
            False,
            "no RealSense camera found on USB",
            "plug the camera into a USB 3 port with its own cable; `lsusb | grep 8086` must list it; "
            f"the udev rules in {UDEV_RULES} give the service access",
        )
    if serial_number and serial_number not in found:
        return CheckResult(
            name,
            False,
            f"RealSense {serial_number} not found; connected: {', '.join(found)}",
            "set [camera] serial to the connected camera's serial number",
        )
    return CheckResult(name, True, f"RealSense connected: {', '.join(found)}")


def _check_recording(recording: str) -> CheckResult:
    name = "camera"
    if not recording:
        return CheckResult(
            name,
            False,
            "camera source is a recording but no file is set",
            "set [camera] recording to a .db3 file",
        )
    path = Path(recording)
    if not path.is_file():
        return CheckResult(
            name,
            False,
            f"camera recording {recording} does not exist",
            "set [camera] recording to an existing file",
        )
    if not os.access(path, os.R_OK):
        return CheckResult(
            name,
            False,
            f"no permission to read camera recording {recording}",
            "make it readable: chmod a+r FILE",
        )
    import pyrealsense2 as rs

    pipe = rs.pipeline()
    cfg = rs.config()
    try:
        cfg.enable_device_from_file(str(path), repeat_playback=False)
        profile = pipe.start(cfg)
        profile.get_device().as_playback().set_real_time(False)
        streams = sorted(s.stream_name() for s in profile.get_streams())
        pipe.stop()
    except RuntimeError as exc:
        return CheckResult(
            name, False, f"camera recording {recording} cannot be played back: {exc}", "record it again"
        )
    return CheckResult(name, True, f"recording {path.name} plays back ({', '.join(streams)})")


# --- model ----------------------------------------------------------------------------------------


def find_shipped_model(models_root: Path) -> Path | None:
    """The newest ``<name>/<version>/`` folder with a manifest.json under ``models_root``, if any."""
    from service.daemon.onnx_model import ModelLoadError, shipped_model_dir  # numpy: only when checking

    try:
        return shipped_model_dir(models_root)
    except ModelLoadError:
        return None


def check_model_files(model_dir: str, models_root: Path) -> CheckResult:
    """The model folder passes the daemon's own manifest check: keys, units, every file's sha256."""
    from service.daemon.onnx_model import ModelLoadError, read_manifest

    name = "model"
    folder = Path(model_dir) if model_dir else find_shipped_model(models_root)
    if folder is None:
        return CheckResult(
            name,
            False,
            f"no model is installed (no <name>/<version>/manifest.json in {models_root})",
            "build it with `make model`, or set [model] dir to a model version folder",
        )
    if not folder.is_dir():
        return CheckResult(
            name,
            False,
            f"model folder {model_dir} does not exist",
            "set [model] dir to an installed model version",
        )
    try:
        manifest = read_manifest(folder)
    except ModelLoadError as exc:
        return CheckResult(
            name, False, str(exc), "reinstall the model version; do not edit files in the model store"
        )
    return CheckResult(
        name,
        True,
        f"{manifest['name']} {manifest['version']} in {folder} ({len(manifest['files'])} files, hashes match)",
    )


def check_model_runtime(
    model_file: Path | None, providers: list[str], dev: Path = Path("/dev")
) -> CheckResult:
    """ONNX Runtime loads, and which configured execution provider actually runs the model.

    Providers are judged by the daemon's own check (``onnx_model.usable_providers``: in the build and
    its libraries load), so doctor never calls a provider available that ``run`` cannot load. TensorRT
    is not exercised: building its engine can take minutes and belongs to the service (the engine
    cache). A GPU present (``dev``) while the model runs on the CPU is a failure, said loudly.
    """
    name = "model runtime"
    unknown = [p for p in providers if p not in PROVIDER_NAMES]
    if unknown or not providers:
        return CheckResult(
            name,
            False,
            f"unknown execution providers in the config: {unknown or 'none given'}",
            f"set [model] providers to some of {list(PROVIDER_NAMES)}",
        )
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return CheckResult(
            name,
            False,
            f"ONNX Runtime is not installed ({exc})",
            "pip install 'sonoguide[cpu]' (or [gpu] with an NVIDIA GPU); on a Jetson NVIDIA's wheel (docs/jetson.md)",
        )
    from service.daemon.accelerator import cpu_despite_gpu, gpu_devices
    from service.daemon.onnx_model import usable_providers

    ort.set_default_logger_severity(4)  # a missing GPU is reported below, not as a C++ error dump
    usable, unusable = usable_providers(providers)
    if not usable:
        why = "; ".join(f"{p}: {w}" for p, w in unusable.items())
        return CheckResult(
            name,
            False,
            f"none of the configured providers ({', '.join(providers)}) can run here ({why})",
            'add "cpu" to [model] providers, or install the GPU build (docs/jetson.md)',
        )
    trt = "TensorrtExecutionProvider"
    trt_note = ""
    if trt in usable:
        trt_note = "TensorRT loads here (engine built by the service)"
    elif trt in unusable and "not in this" not in unusable[trt]:
        trt_note = f"TensorRT is in this build but cannot load here ({unusable[trt]})"
    if model_file is None:
        return CheckResult(
            name,
            False,
            f"ONNX Runtime {ort.__version__} can run {', '.join(usable)}, but there is no model to load",
            "install a model (see the model check)",
        )
    session_providers = [p for p in usable if p != trt] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in session_providers:
        session_providers.append("CPUExecutionProvider")  # as run does: CPU is the last resort
    try:
        session = ort.InferenceSession(str(model_file), providers=session_providers)
    except Exception as exc:  # ORT raises its own exception types from C++
        return CheckResult(
            name, False, f"ONNX Runtime cannot load {model_file.name}: {exc}", "reinstall the model version"
        )
    running = session.get_providers()[0]
    if trt in usable and running == "CPUExecutionProvider":
        trt_note = ""  # its libraries load, but the GPU under it does not answer: run gets the CPU too
    detail = f"{model_file.name} loads; runs on {running}" + (f"; {trt_note}" if trt_note else "")
    warning = cpu_despite_gpu(gpu_devices(dev), ort.get_available_providers(), running, unusable)
    if warning:
        return CheckResult(
            name,
            False,
            f"{detail}. {warning}",
            "x86_64: pip install 'sonoguide[gpu]' (and the CUDA/cuDNN libraries); Jetson: NVIDIA's "
            "onnxruntime-gpu wheel and no PyPI onnxruntime in the venv (docs/jetson.md)",
        )
    gpu_wanted = any(PROVIDER_NAMES[p] in (trt, "CUDAExecutionProvider") for p in providers)
    if gpu_wanted and running == "CPUExecutionProvider":
        return CheckResult(
            name,
            True,
            detail + " (no GPU here: slower guidance)",
            "on a Jetson install NVIDIA's onnxruntime-gpu wheel and check `nvpmodel -q` (docs/jetson.md)",
        )
    return CheckResult(name, True, detail)


# --- credentials and broker -----------------------------------------------------------------------


def find_credential(name: str, credentials_dir: Path | None) -> Path | None:
    if credentials_dir is None:
        return None
    path = credentials_dir / name
    return path if path.exists() else None


def check_credentials(
    username: str,
    credentials_dir: Path | None,
    env_password: str | None,
    tls: bool = False,
    cert_file: str = "",
    key_file: str = "",
) -> tuple[CheckResult, str | None]:
    """A password exists when a username is set, and secret files are readable by their owner only.

    Returns the result and the password found (for the broker check); the password is never printed.
    """
    name = "credentials"
    where = str(credentials_dir) if credentials_dir else "$CREDENTIALS_DIRECTORY"
    password: str | None = None
    found: list[str] = []
    if username:
        cred = find_credential("mqtt-password", credentials_dir)
        if env_password:
            password, source = env_password, "$SONOGUIDE_MQTT_PASSWORD"
        elif cred is not None:
            problem = _secret_file_problem(cred)
            if problem:
                return CheckResult(name, False, problem, f"chmod 600 {cred}"), None
            password, source = cred.read_text().rstrip("\r\n"), str(cred)
            if not password:
                return CheckResult(
                    name, False, f"{cred} is empty", f"write the MQTT password into {cred}"
                ), None
        else:
            return (
                CheckResult(
                    name,
                    False,
                    f"MQTT username {username!r} is set but no password was found (no mqtt-password in {where})",
                    "as root: install -m 600 /dev/stdin /etc/credstore/mqtt-password, type the password, "
                    "press Ctrl-D; then systemctl restart sonoguide",
                ),
                None,
            )
        found.append(f"MQTT password for {username!r} from {source}")
    if tls and cert_file:
        key = find_credential("mqtt-tls-key", credentials_dir) or (Path(key_file) if key_file else None)
        if key is None or not key.exists():
            return (
                CheckResult(
                    name,
                    False,
                    f"a TLS client certificate is set but its key was not found (no mqtt-tls-key in {where}"
                    + (f", no {key_file})" if key_file else ")"),
                    "copy the key to /etc/credstore/mqtt-tls-key with mode 600",
                ),
                password,
            )
        problem = _secret_file_problem(key)
        if problem:
            return CheckResult(name, False, problem, f"chmod 600 {key}"), password
        found.append(f"TLS client key {key}")
    if not found:
        return CheckResult(name, True, "no MQTT credentials configured (anonymous, local broker)"), None
    return CheckResult(name, True, "; ".join(found)), password


def _secret_file_problem(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if mode & 0o077:
        return f"{path} can be read by other users (mode {stat.filemode(mode)})"
    if not os.access(path, os.R_OK):
        return f"no permission to read {path}"
    return ""


def mqtt_client(
    client_id: str,
    username: str,
    password: str | None,
    tls: bool,
    ca_file: str,
    cert_file: str,
    key_file: str,
) -> Any:
    """An MQTT 5 client with the configured credentials and TLS files (not connected yet)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=ca_file or None, certfile=cert_file or None, keyfile=key_file or None)
    return client


def check_broker(
    host: str,
    port: int,
    username: str = "",
    password: str | None = None,
    tls: bool = False,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    timeout: float = 3.0,
) -> CheckResult:
    """A real TCP connection and MQTT CONNECT with the configured credentials."""
    import paho.mqtt.client as mqtt

    name = "broker"
    where = f"{host}:{port}" + (" (TLS)" if tls else "")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return CheckResult(
            name,
            False,
            f"cannot reach the MQTT broker at {where}: {exc.strerror or exc}",
            "start it: systemctl enable --now mosquitto; check [mqtt] host and port",
        )
    client = mqtt_client("", username, password, tls, ca_file, cert_file, key_file)
    done = threading.Event()
    outcome: list[mqtt.ReasonCode] = []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: mqtt.ReasonCode, p: object) -> None:
        outcome.append(rc)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return CheckResult(
            name,
            False,
            f"connection to {where} failed: {exc}",
            "check [mqtt] tls and ca_file against the broker",
        )
    client.loop_start()
    try:
        answered = done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if not answered:
        return CheckResult(
            name,
            False,
            f"{where} accepts connections but sent no MQTT answer",
            "is it an MQTT broker? TLS port?",
        )
    rc = outcome[0]
    if rc.is_failure:
        return CheckResult(
            name,
            False,
            f"the broker at {where} refused the connection: {rc}",
            "check [mqtt] username and the password in /etc/credstore/mqtt-password against the broker",
        )
    return CheckResult(name, True, f"connected to {where}" + (f" as {username!r}" if username else ""))


# --- model updates (docs/model-updates.md) --------------------------------------------------------

# Room an update needs besides the bundle itself: one more version of the size of the factory model.
STORE_FREE_MIN_BYTES = 256 << 20


def check_model_keys(keys_dir: str, pinned_dir: str = "") -> CheckResult:
    """The trusted vendor keys: readable, not expired; revoked ones named. None is a hint, not a failure."""
    from service.model_store import ModelStoreError
    from service.model_store.keys import Trust, format_time, utc_now

    name = "model keys"
    if pinned_dir:
        return CheckResult(name, True, f"not used: [model] dir pins {pinned_dir} (no updates)")
    try:
        trust = Trust.load(Path(keys_dir))
    except ModelStoreError as exc:
        return CheckResult(name, False, str(exc), "replace the file with the vendor's NAME.pub.json")
    now = utc_now()
    usable = [k for k in trust.keys.values() if k.key_id not in trust.revoked and k.expires > now]
    if not usable:
        revoked_ids = sorted(trust.revoked & set(trust.keys))
        why = (
            "none"
            if not trust.keys
            else "all expired or revoked" + (f": revoked {', '.join(revoked_ids)}" if revoked_ids else "")
        )
        return CheckResult(
            name,
            True,
            f"no usable vendor key in {keys_dir} ({why}): model updates will be refused",
            f"copy the vendor's current NAME.pub.json into {keys_dir}",
        )
    soon = [k for k in usable if (k.expires - now).days < 60]
    detail = ", ".join(f"{k.key_id} ({k.owner}, until {format_time(k.expires)})" for k in usable)
    revoked = f"; revoked: {', '.join(sorted(trust.revoked))}" if trust.revoked else ""
    hint = f"key {soon[0].key_id} expires within 60 days: install the vendor's next key" if soon else ""
    return CheckResult(name, True, f"trusted: {detail}{revoked}", hint)


def check_model_store(store_dir: str, keys_dir: str, pinned_dir: str = "") -> CheckResult:
    """The model store: present, its pointer readable, the version it serves verified, room for one more."""
    import shutil

    from service import __version__
    from service.daemon.onnx_model import shipped_model_dir
    from service.model_store import ModelStoreError
    from service.model_store.bundle import verify_folder
    from service.model_store.keys import Trust
    from service.model_store.store import INCOMING, Factory, ModelStore

    name = "model store"
    if pinned_dir:
        return CheckResult(name, True, f"not used: [model] dir pins {pinned_dir} (no updates)")
    root = Path(store_dir)
    if not root.is_dir():
        return CheckResult(
            name,
            False,
            f"model store {root} does not exist",
            "run systemd/install.sh (it creates /var/lib/sonoguide/models), or set [model] store",
        )
    try:
        store = ModelStore(root, Factory.from_folder(shipped_model_dir()), __version__)
        state = store.read_state()
        trust = Trust.load(Path(keys_dir))
        if state.active is not None:
            verify_folder(store.versions / state.active, trust)
    except (ModelStoreError, OSError, ValueError) as exc:
        return CheckResult(
            name,
            False,
            f"{root}: {exc}",
            "the daemon falls back to the previous or factory model; reinstall the version or "
            "`sonoguide model rollback`",
        )
    versions = sorted(p.name for p in store.versions.iterdir()) if store.versions.is_dir() else []
    free = shutil.disk_usage(root).free
    active = state.active or f"factory {store.factory.version}"
    detail = (
        f"active {active}" + (" (on probation)" if state.trial else "")
        + f", installed: {', '.join(versions) or 'none'}, {free / 1e9:.1f} GB free"
    )  # fmt: skip
    if free < STORE_FREE_MIN_BYTES:
        return CheckResult(
            name,
            False,
            detail + f": less than {STORE_FREE_MIN_BYTES >> 20} MB, an update will be refused",
            "`sonoguide model remove VERSION` for versions no longer needed",
        )
    leftovers = list(root.glob(f"{INCOMING}*"))
    hint = (
        "an interrupted install left files; the next install or daemon start removes them"
        if leftovers
        else ""
    )
    return CheckResult(name, True, detail, hint)


# --- PACS and worklist (DICOM) ------------------------------------------------------------------------


def check_dicom_peer(name: str, host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 3.0,
                     tls: bool = False, ca_file: str = "", cert_file: str = "", key_file: str = "") -> CheckResult:  # fmt: skip
    """An association and a C-ECHO with the configured AE titles (what a capture's C-STORE needs)."""
    if not host:
        return CheckResult(
            name, True, "none configured: captures stay on the device" if name == "pacs" else "none configured",
            f"set [{name}] host, port and called_ae to the hospital's {'PACS' if name == 'pacs' else 'worklist'}",
        )  # fmt: skip
    from service.daemon.pacs_client import PacsAddress, PacsUnavailableError, echo

    address = PacsAddress(host, port, called_ae, calling_ae, timeout, tls, ca_file, cert_file, key_file)
    try:
        return CheckResult(name, True, echo(address))
    except PacsUnavailableError as exc:
        return CheckResult(
            name, False, str(exc),
            f"check [{name}] host, port and called_ae, and that the {name.upper()} lists us as AE title "
            f"{calling_ae!r}; the systemd unit allows only localhost unless a drop-in adds "
            "IPAddressAllow= (docs/captures.md)",
        )  # fmt: skip
