"""Model updates in the running daemon, end to end with real pieces: the reference emulator on a real pty
at 30 fps, the real ProbeLink, real mosquitto, the real ONNX model on the CPU, a bundle signed with a
freshly generated Ed25519 key, the real store on disk. Frames are counted by id across every swap.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from service.daemon.app import Daemon
from service.daemon.config import parse_config
from service.daemon.onnx_model import OnnxModel
from service.model_store.bundle import write_tar
from service.model_store.keys import REVOKED_FILE
from service.tools.local_broker import LocalBroker
from tests.model_bundles import (
    FACTORY_VERSION,
    SHIPPED,
    Vendor,
    hostile,
    lying_header,
    make_store,
    members_of,
    model_files,
    rewrite,
    shipped_golden,
    snapshot,
)
from tests.service_bench import EmulatedProbe, Recorder


def cpu_loader(folder: Path) -> OnnxModel:
    return OnnxModel(folder, ("cpu",))


class RecordingLink:
    """The real ProbeLink, noting the id of every frame it hands to the pipeline's acquire stage."""

    def __init__(self, link: Any) -> None:
        self._link = link
        self.handed: set[int] = set()

    def latest_frame(self, timeout: float = 0.1) -> Any:
        frame = self._link.latest_frame(timeout=timeout)
        if frame is not None:
            self.handed.add(int(frame.frame_id))
        return frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


class UpdateBench:
    def __init__(self, broker: LocalBroker, root: Path, vendor: Vendor, **model: Any) -> None:
        self.store = make_store(root / "store")
        section = {"store": str(self.store.root), "keys": str(vendor.trustdir), "safe_after_s": 1.0,
                   "probation_s": 1.5, "probation_max_latency_ms": 5000.0, **model}  # fmt: skip
        self.config = parse_config(
            {
                "device": {"id": f"upd-{uuid.uuid4().hex[:8]}"},
                "mqtt": {"port": broker.port},
                "model": section,
            },
            "<test>",
            env={},
        )
        self.probe = EmulatedProbe(fps=30.0)
        self.on_skin = self.probe.pose
        self.link_skipped: list[int] = []  # frames around swaps the pipeline never received
        self.handoff_dropped: list[int] = []  # frames around swaps its latest-value hand-offs dropped
        self.recorder = Recorder(broker.port, self.config.device.id)
        self.link = RecordingLink(self.probe.link)
        self.daemon = Daemon(
            self.config,
            self.link,  # type: ignore[arg-type]
            cpu_loader(SHIPPED),
            model_loader=cpu_loader,
            model_store=self.store,
            status_period_s=0.3,
        ).start()
        assert self.daemon.mqtt.wait_connected(5)
        assert self.recorder.wait_for(lambda: len(self.recorder.of("guidance")) > 10, 15)

    def lift(self) -> None:
        target = self.probe.phantom.target_pose
        self.probe.pose = self.probe.source.emulator_pose(
            target.apply_motion([0.0, 0.0, -40.0], [0.0, 0.0, 0.0])
        )

    def status(self) -> dict[str, Any]:
        return self.recorder.of("status")[-1].payload

    def wait_status(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        rec = self.recorder
        assert rec.wait_for(
            lambda: bool(rec.of("status")) and predicate(rec.of("status")[-1].payload), timeout
        ), self.status()
        return self.status()

    def model_events(self, step: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.recorder.of("events") if m.payload.get("step") == step]

    def frame_ids(self) -> list[int]:
        return [m.payload["frame_id"] for m in self.recorder.of("guidance")]

    def assert_guided_around(self, frame_id: int, before: int = 10, after: int = 30) -> None:
        """From ``before`` frames before the swap to ``after`` after, a frame without guidance must be
        one the pipeline's own latest-value hand-offs dropped (a busy machine, not the swap: on a
        loaded 2-core machine those happen anywhere, the swap's frames included, so no frame is
        exempt from the count) and no stage may have failed. A frame the probe link replaced with a
        newer one before the acquire stage asked never entered the pipeline: counted apart."""
        rec = self.recorder
        assert rec.wait_for(lambda: max(self.frame_ids()) >= frame_id + after, 10)
        window = set(range(frame_id - before, frame_id + after + 1))
        received, guided = window & self.link.handed, window & set(self.frame_ids())
        assert len(received) >= len(window) // 2, sorted(window - received)
        pipeline = self.daemon.pipeline
        missing = sorted(received - guided)
        drops = pipeline.dropped()
        unguided_drops = drops["preprocess"] + drops["infer"] + drops["guide"]
        assert pipeline.errors == 0 and len(missing) <= unguided_drops, (
            f"frames without guidance around the swap after frame {frame_id}: {missing}; "
            f"hand-off drops {drops}, stage errors {pipeline.errors}"
        )
        self.handoff_dropped.extend(missing)
        self.link_skipped.extend(sorted(window - received))

    def close(self) -> None:
        self.daemon.stop()
        self.probe.close()
        self.recorder.close()
        assert not self.recorder.invalid, self.recorder.invalid


@pytest.fixture
def bench(broker: LocalBroker, tmp_path: Path) -> Any:
    benches: list[UpdateBench] = []

    def make(vendor: Vendor, **model: Any) -> UpdateBench:
        b = UpdateBench(broker, tmp_path / f"b{len(benches)}", vendor, **model)
        benches.append(b)
        return b

    yield make
    for b in benches:
        b.close()


def test_install_wait_for_safe_moment_swap_probation_rollback_and_forced_activation(
    bench: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vendor = Vendor(tmp_path / "vendor")  # a freshly generated key, trusted by this device only
    bundle = vendor.bundle(tmp_path / "sonoguide-view-1.6.0.sgb", "1.6.0")
    b = bench(vendor)
    rec = b.recorder
    assert b.status()["model"]["version"] == FACTORY_VERSION

    # Install and activate while the probe is on the skin: ready, but it waits for a safe moment.
    t0 = time.monotonic()
    reply = rec.request("install_model", {"path": str(bundle), "activate": True}, timeout=60, final=True)
    install_s = time.monotonic() - t0
    assert reply["ok"], reply
    assert reply["result"]["state"] == "pending" and reply["result"]["version"] == "1.6.0", reply
    assert "no skin contact" in reply["result"]["waiting_for"]
    progress = [body["progress"] for _corr, body in rec.reply_log if "progress" in body]
    assert any("golden vectors" in p for p in progress) and any("warmed up" in p for p in progress), progress
    status = b.wait_status(lambda s: s["model"].get("pending") == "1.6.0")
    assert status["model"]["version"] == FACTORY_VERSION
    installed = b.model_events("installed")[0]
    assert (
        installed["key_id"] == vendor.key.key_id and installed["model_version"] == "1.6.0" and installed["at"]
    )

    # The probe leaves the skin: after safe_after_s the swap happens by itself, between two frames.
    b.lift()
    assert rec.wait_for(lambda: b.model_events("activated"), 15)
    activated = b.model_events("activated")[0]
    assert "no skin contact" in activated["reason"] and activated["key_id"] == vendor.key.key_id
    b.assert_guided_around(activated["frame_id"])
    status = b.wait_status(lambda s: s["model"]["version"] == "1.6.0")
    assert status["model"]["probation"]["state"] in ("watching", "passed") and not status["model"]["pending"]
    assert b.store.read_state().as_dict() in (
        {"active": "1.6.0", "previous": None, "trial": True},
        {"active": "1.6.0", "previous": None, "trial": False},
    )
    assert rec.wait_for(lambda: b.model_events("probation_passed"), 15)
    b.wait_status(lambda s: s["model"]["probation"]["state"] == "passed")
    assert b.store.read_state().as_dict() == {"active": "1.6.0", "previous": None, "trial": False}

    # Rollback over MQTT: instant, between two frames, status says so, the store agrees.
    b.probe.pose = b.on_skin
    last = max(b.frame_ids())
    reply = rec.request("rollback_model", {"reason": "test"}, timeout=30, final=True)
    assert (
        reply["ok"] and reply["result"]["version"] == FACTORY_VERSION and reply["result"]["from"] == "1.6.0"
    ), reply
    b.assert_guided_around(last)
    b.wait_status(lambda s: s["model"]["version"] == FACTORY_VERSION and s["model"]["previous"] == "1.6.0")
    assert b.store.read_state().active is None

    # Forced activation on the skin: now, not at a safe moment.
    reply = rec.request("activate_model", {"version": "1.6.0", "force": True}, timeout=60, final=True)
    assert (
        reply["ok"] and reply["result"]["state"] == "probation" and "forced" in reply["result"]["reason"]
    ), reply
    b.assert_guided_around(b.model_events("activated")[-1]["frame_id"])
    b.wait_status(lambda s: s["model"]["version"] == "1.6.0")
    # Downgrade by activation needs asking; a rollback does not.
    reply = rec.request("activate_model", {"version": "factory", "force": True}, timeout=30, final=True)
    assert not reply["ok"] and "older than the active 1.6.0" in reply["error"], reply
    swaps = [round(s["swap_ms"], 3) for s in b.daemon.model_updates.swaps]
    with capsys.disabled():  # the figures of docs/model-updates.md
        print(
            f"\nmodel update figures: install + golden + load + warm-up {install_s:.2f} s; swaps {swaps} ms;"
            f" frames without guidance at the swaps 0; within 10 before to 30 after 3 swaps: dropped by the"
            f" latest-value hand-offs (busy machine) {len(b.handoff_dropped)}, replaced by the probe link"
            f" before the pipeline asked {len(b.link_skipped)}"
        )


def _bad_bundles(tmp: Path, vendor: Vendor, good: Path) -> dict[str, tuple[Path, str]]:
    """One bundle (or path) per bad input of issue 15, with the words its refusal must contain."""
    raw = good.read_bytes()
    (tmp / "cut.sgb").write_bytes(raw[: len(raw) // 2])
    (tmp / "text.sgb").write_bytes(b"not a bundle at all\n")
    golden = json.loads(json.dumps(shipped_golden()))
    golden["vectors"][0]["int8"]["quality"][0] += 0.5
    past = datetime.now(timezone.utc) - timedelta(days=730)
    expired = Vendor(tmp / "expired", "expired", now=past, valid_days=365)
    shutil.copy(expired.trustdir / "expired.pub.json", vendor.trustdir)  # trusted, but expired
    members = members_of(good)

    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "model/model.int8.onnx" else data

    def newer(m: dict[str, Any]) -> None:
        m["min_service_version"] = "9.0.0"

    def nhwc(m: dict[str, Any]) -> None:
        m["inputs"][0]["layout"] = "NHWC"

    write_tar(tmp / "unsigned.sgb", [m for m in members if m[0] != "bundle.sig"])
    device = tarfile.TarInfo("model/tty")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 4, 1
    hard = tarfile.TarInfo("model/link")
    hard.type, hard.linkname = tarfile.LNKTYPE, "model/model.int8.onnx"
    return {
        "truncated": (tmp / "cut.sgb", "truncated"),
        "corrupt": (tmp / "text.sgb", "not gzip-compressed"),
        "changed after signing": (rewrite(good, tmp / "changed.sgb", flip), "does not match its sha256"),
        "unknown key": (Vendor(tmp / "stranger", "stranger").bundle(tmp / "s.sgb", "1.7.0"), "unknown key"),
        "expired key": (expired.bundle(tmp / "e.sgb", "1.7.0", now=past), "expired key"),
        "unsigned": (tmp / "unsigned.sgb", "not signed"),
        "absolute path": (hostile(good, tmp / "abs.sgb", _regular("/etc/cron.d/x")), "absolute path"),
        "dot-dot": (hostile(good, tmp / "dd.sgb", _regular("model/../../x")), "'..'"),
        "symlink": (hostile(good, tmp / "l.sgb", _symlink("model/evil", "/etc/shadow")), "symbolic link"),
        "hard link": (hostile(good, tmp / "h.sgb", hard), "hard link"),
        "device file": (hostile(good, tmp / "d.sgb", device), "device file"),
        "bomb": (lying_header(tmp / "bomb.sgb", "bundle.json", 64 << 30, b"{" * 4096), "at most"),
        "newer service": (
            vendor.bundle(tmp / "n.sgb", "1.7.0", model_files("1.7.0", newer)),
            "needs service 9.0.0",
        ),
        "input contract": (
            vendor.bundle(tmp / "c.sgb", "1.7.0", model_files("1.7.0", nhwc)),
            "input contract",
        ),
        "golden": (
            vendor.bundle(
                tmp / "g.sgb", "1.7.0", {**model_files("1.7.0"), "golden.json": json.dumps(golden).encode()}
            ),
            "golden vectors out of tolerance on CPUExecutionProvider",
        ),
        "missing": (tmp / "nothing.sgb", "cannot read bundle"),
    }


def test_bad_bundles_over_mqtt_are_refused_while_the_old_model_keeps_guiding(
    bench: Any, tmp_path: Path
) -> None:
    vendor = Vendor(tmp_path / "vendor")
    good = vendor.bundle(tmp_path / "1.6.0.sgb", "1.6.0")
    b = bench(vendor)
    rec = b.recorder
    bad = _bad_bundles(tmp_path, vendor, good)
    before = snapshot(b.store.root)

    def refused(name: str, path: Path, fragment: str) -> None:
        seen = len(rec.of("guidance"))
        reply = rec.request("install_model", {"path": str(path), "activate": True}, timeout=60, final=True)
        assert not reply["ok"] and fragment in reply["error"], (name, reply)
        assert "serving model is unchanged" in reply["error"], (name, reply)
        assert snapshot(b.store.root) == before, name
        assert rec.wait_for(lambda: len(rec.of("guidance")) > seen + 5, 10), name  # still guiding
        assert b.status()["model"]["version"] == FACTORY_VERSION, name

    for name, (path, fragment) in bad.items():
        refused(name, path, fragment)
    # A revoked key: the good bundle itself, while its key id is on the revocation list.
    (vendor.trustdir / REVOKED_FILE).write_text(vendor.key.key_id + "\n")
    refused("revoked key", good, "revoked key")
    (vendor.trustdir / REVOKED_FILE).unlink()
    # A second install while one runs (another process would hold the same lock).
    with make_store(b.store.root).locked():
        refused("second install", good, "another install or activation is running")
    assert len(b.model_events("install_refused")) == len(bad) + 2
    # And the good bundle still installs after all of it.
    reply = rec.request("install_model", {"path": str(good)}, timeout=60, final=True)
    assert reply["ok"] and reply["result"]["state"] == "installed", reply


def test_probation_failure_rolls_back_by_itself(bench: Any, tmp_path: Path) -> None:
    vendor = Vendor(tmp_path / "vendor")
    good = vendor.bundle(tmp_path / "1.6.0.sgb", "1.6.0")
    # Latency limit no inference can meet: the probation fails on its third frame.
    b = bench(vendor, probation_s=30.0, probation_max_latency_ms=0.001)
    rec = b.recorder
    keys_before = snapshot(vendor.trustdir)

    reply = rec.request(
        "install_model", {"path": str(good), "activate": True, "force": True}, timeout=60, final=True
    )
    assert reply["ok"] and reply["result"]["state"] == "probation", reply
    assert rec.wait_for(lambda: b.model_events("rolled_back"), 15)
    rolled = b.model_events("rolled_back")[0]
    assert (
        rolled["kind"] == "warning"
        and rolled["source"] == "auto"
        and "slower than 0.001 ms" in rolled["reason"]
    )
    b.assert_guided_around(b.model_events("activated")[0]["frame_id"])
    status = b.wait_status(lambda s: s["model"]["version"] == FACTORY_VERSION)
    assert (
        status["model"]["probation"]["state"] == "failed"
        and "slower" in status["model"]["probation"]["reason"]
    )
    assert b.store.read_state().as_dict() == {"active": None, "previous": "1.6.0", "trial": False}
    assert snapshot(vendor.trustdir) == keys_before  # the daemon only reads the keys


def _regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info
