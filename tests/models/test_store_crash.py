"""Crash consistency: installs and activations killed with SIGKILL at random moments (a power cut).

Each operation runs in its own real process (the store's code, real bundles, real ONNX Runtime for
the golden vectors), which is killed at a random moment of its run. After each kill the store is
opened the way the daemon opens it at start (``resolve_active``): it serves exactly one complete,
verified version, and the listing (``sonoguide model list``'s code; the command itself at the end)
agrees with the folders on disk. At the end the daemon itself (``sonoguide run``, the emulator on a
pty, real mosquitto) starts on the store and serves that version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firmware_bridge.emulator import CallablePoseSource, ProbeEmulator, SimImageSource
from firmware_bridge.emulator.state import Capabilities
from firmware_bridge.ptyport import PtyPair
from service.model_store.bundle import verify_folder
from service.model_store.store import INCOMING
from service.tools.local_broker import LocalBroker
from tests.model_bundles import Vendor, golden_loader, make_store
from tests.service_bench import Recorder

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
WORKER = """
import json, sys
from pathlib import Path
from service.model_store.keys import Trust
from tests.model_bundles import golden_loader, make_store
print("ready", flush=True)
op = json.loads(sys.stdin.readline())
store, trust = make_store(Path(op["store"])), Trust.load(Path(op["keys"]))
if op["op"] == "install":
    store.install(Path(op["bundle"]), trust, golden_loader, allow_downgrade=True)
elif op["op"] == "activate":
    store.activate(op["version"], trust, allow_downgrade=True, trial=op["trial"])
else:
    store.rollback(trust)
print("done", flush=True)
"""


def _worker() -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _check_consistent(store: Any, trust: Any) -> str:
    """What the daemon would serve after this crash; fails unless exactly one complete version."""
    state, folder, _notes = store.resolve_active(trust)  # takes the lock: leftovers of the dead go
    on_disk = sorted(p.name for p in store.versions.iterdir()) if store.versions.is_dir() else []
    assert not list(store.root.glob(f"{INCOMING}*")), "an interrupted install left files behind"
    listed = store.entries(trust)
    assert sorted(e.version for e in listed if e.where == "store") == on_disk
    assert all(e.ok for e in listed), [e.problem for e in listed if not e.ok]
    assert sum(e.active for e in listed) == 1
    assert not state.trial
    if folder == store.factory.folder:
        assert state.active is None or state.active not in on_disk
        return "factory"
    verified = verify_folder(folder.parent, trust)  # complete: every file there, every hash right
    assert verified.version == folder.parent.name
    return verified.version


def test_twenty_kills_during_installs_and_activations_leave_one_complete_verified_version(
    tmp_path: Path, broker: LocalBroker
) -> None:
    vendor = Vendor(tmp_path)
    store, trust = make_store(tmp_path / "store"), vendor.trust
    store.install(vendor.bundle(tmp_path / "1.6.0.sgb", "1.6.0"), trust, golden_loader)
    store.activate("1.6.0", trust)
    rng = random.Random(15)
    next_minor = 7
    duration = {"install": 0.0, "activate": 0.0}
    served: list[str] = []
    outcomes = {"killed": 0, "finished": 0}
    worker = _worker()
    for i in range(KILLS + 2):
        kind = "activate" if i == 1 or i % 3 == 2 else "install"
        if kind == "install":
            version = f"1.{next_minor}.0"
            next_minor += 1
            op: dict[str, Any] = {
                "op": "install",
                "bundle": str(vendor.bundle(tmp_path / f"{version}.sgb", version)),
            }
        else:
            installed = [p.name for p in store.versions.iterdir()] + ["factory"]
            op = {"op": "activate", "version": rng.choice(installed), "trial": rng.random() < 0.3}
            if rng.random() < 0.3:
                op = {"op": "rollback"}
        op |= {"store": str(store.root), "keys": str(vendor.trustdir)}
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        following = _worker()  # imports while this one works
        assert worker.stdin is not None
        t0 = time.monotonic()
        worker.stdin.write(json.dumps(op) + "\n")
        worker.stdin.flush()
        if i < 2:  # the first install and activation run to the end: how long one takes here
            assert worker.wait(60) == 0
            duration[kind] = time.monotonic() - t0
        else:
            time.sleep(rng.uniform(0.0, 1.2 * duration[kind]))
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            outcomes["finished" if worker.returncode == 0 else "killed"] += 1
        worker.stdin.close()
        worker.stdout.close()
        served.append(_check_consistent(store, trust))
        worker = following
    worker.kill()
    worker.wait(10)
    print(f"crash test: {outcomes}, per-op durations {duration}, served after each: {served}")
    assert outcomes["killed"] + outcomes["finished"] == KILLS and outcomes["killed"] >= KILLS // 2, outcomes
    # The command the technician runs agrees with the disk too.
    listing = subprocess.run(
        [sys.executable, "-m", "service", "model", "list", "--json", "--store", str(store.root), "--keys", str(vendor.trustdir)],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    body = json.loads(listing.stdout)
    assert sorted(v["version"] for v in body["versions"] if v["where"] == "store") == sorted(
        p.name for p in store.versions.iterdir()
    )
    assert all(v["ok"] for v in body["versions"])
    # The daemon itself, started as systemd starts it, serves the version the store resolves to.
    assert _daemon_serves(tmp_path, broker, store, vendor) == served[-1]


def _daemon_serves(tmp_path: Path, broker: LocalBroker, store: Any, vendor: Vendor) -> str:
    """``sonoguide run`` on the store, the emulator on a pty: the model version its status names."""
    source = SimImageSource("abdomen", 2)
    pty = PtyPair()
    emulator = ProbeEmulator(
        pty.device_fd, source, CallablePoseSource(lambda t: source.emulator_pose(source.phantom.target_pose)),
        Capabilities(**source.capabilities(), fps=30.0), initial_params=source.default_params(),
    ).start()  # fmt: skip
    device = f"crash-{os.getpid()}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[device]\nid = "{device}"\n[probe]\nport = "{pty.host_path}"\n[model]\nproviders = ["cpu"]\n'
        f'store = "{store.root}"\nkeys = "{vendor.trustdir}"\n[mqtt]\nport = {broker.port}\n'
    )
    rec = Recorder(broker.port, device)
    log = tmp_path / "daemon.log"
    err = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "run", "--config", str(config)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    try:
        assert rec.wait_for(lambda: any(m.payload.get("fps", 0) > 0 for m in rec.of("status")), 60), (
            log.read_text()
        )
        version = rec.of("status")[-1].payload["model"]["version"]
        return (
            "factory" if store.read_state().active is None and version == store.factory.version else version
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        err.close()
        rec.close()
        emulator.stop()
        pty.close()
