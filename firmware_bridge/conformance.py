"""``sonoguide probe conformance``: checks any device must pass, each with a plain-words reason."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_bridge import messages as m
from firmware_bridge.errors import ProbeError, ProbeNack
from firmware_bridge.link import ProbeLink


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


class CheckFailed(AssertionError):  # noqa: N818 - reads as what happened
    pass


def _require(cond: bool, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


class _Recorder:
    """Collects heartbeats and frame headers seen by the link, for the timing checks."""

    def __init__(self, link: ProbeLink) -> None:
        self.lock = threading.Lock()
        self.heartbeats: list[tuple[float, dict[str, Any]]] = []
        self.headers: list[dict[str, Any]] = []
        self.clock = link.clock
        link.add_message_tap(self._tap)

    def _tap(self, msg: m.Message) -> None:
        with self.lock:
            if msg.type == m.HEARTBEAT:
                self.heartbeats.append((self.clock(), msg.fields))
                del self.heartbeats[:-200]
            elif msg.type == m.FRAME_HEADER:
                self.headers.append(msg.fields)
                del self.headers[:-1000]

    def clear(self) -> None:
        with self.lock:
            self.heartbeats.clear()
            self.headers.clear()


def _expect_nack(fn: Callable[[], Any], code: int, what: str) -> None:
    try:
        value = fn()
    except ProbeNack as exc:
        _require(exc.code == code, f"{what}: refused with '{exc.reason}', expected '{m.ERROR_NAMES[code]}'")
        return
    raise CheckFailed(f"{what}: accepted (device returned {value}), expected refusal '{m.ERROR_NAMES[code]}'")


class Conformance:
    def __init__(self, link: ProbeLink, frame_window_s: float = 1.5) -> None:
        self.link = link
        self.window = frame_window_s
        self.rec = _Recorder(link)
        assert link.info is not None
        self.caps = link.info.capabilities

    # Each check raises CheckFailed with the reason, or returns a short summary.
    def check_identify(self) -> str:
        info, c = self.link.info, self.caps
        assert info is not None
        _require(
            bool(info.model and info.serial and info.firmware), "model, serial and firmware must be non-empty"
        )
        _require(
            c["gain_min"] < c["gain_max"] and c["gain_step"] > 0,
            f"bad gain range {c['gain_min']}..{c['gain_max']} step {c['gain_step']}",
        )
        d = c["depths_mm"]
        _require(
            bool(d) and all(a < b for a, b in itertools.pairwise(d)) and d[0] > 0,
            f"depth steps must be positive and ascending: {d}",
        )
        _require(
            bool(c["freqs_mhz"]) and min(c["freqs_mhz"]) > 0,
            f"frequencies must be positive: {c['freqs_mhz']}",
        )
        _require(c["tgc_bands"] == 0 or c["tgc_min"] < c["tgc_max"], "bad TGC range")
        _require(c["width"] > 0 and c["height"] > 0 and 0 < c["fps"] <= 1000, "bad frame geometry or rate")
        return f"{info.model} serial {info.serial} firmware {info.firmware} protocol {info.protocol[0]}.{info.protocol[1]}"

    def check_params_in_range(self) -> str:
        c, link, n = self.caps, self.link, 0
        targets: list[tuple[str, int, float, float]] = []  # name, index, value, tolerance
        mid = c["gain_min"] + round((c["gain_max"] - c["gain_min"]) / 2 / c["gain_step"]) * c["gain_step"]
        targets += [("gain_db", 0, v, c["gain_step"] / 2) for v in (c["gain_min"], c["gain_max"], mid)]
        targets += [("depth_mm", 0, v, 1e-3) for v in c["depths_mm"]]
        targets += [("freq_mhz", 0, v, 1e-3) for v in c["freqs_mhz"]]
        for band in range(c["tgc_bands"]):
            targets += [("tgc_db", band, v, c["tgc_step"] / 2) for v in (c["tgc_min"], c["tgc_max"], 0.0)]
        for name, index, value, tol in targets:
            try:
                got = link.set_param(name, value, index)
            except ProbeNack as exc:
                raise CheckFailed(
                    f"{name}[{index}]={value} is within the advertised range but was refused: {exc.reason}"
                ) from exc
            _require(abs(float(got) - value) <= tol, f"{name}[{index}]: set {value}, device reads back {got}")
            n += 1
        return f"{n} in-range values set and read back"

    def check_params_out_of_range(self) -> str:
        c, link = self.caps, self.link
        before = link.get_param("gain_db")
        cases: list[tuple[str, int, float]] = [
            ("gain_db", 0, c["gain_max"] + c["gain_step"]),
            ("gain_db", 0, c["gain_min"] - c["gain_step"]),
            ("gain_db", 0, math.nan),
            ("depth_mm", 0, c["depths_mm"][0] / 2 + 0.123),
            ("freq_mhz", 0, max(c["freqs_mhz"]) * 3 + 0.123),
            ("tgc_db", c["tgc_bands"], 0.0),
        ]
        if c["tgc_bands"]:
            cases.append(("tgc_db", 0, c["tgc_max"] + 1.0))
        for name, index, value in cases:
            _expect_nack(
                functools.partial(link.set_param, name, value, index),
                m.ERR_OUT_OF_RANGE,
                f"{name}[{index}]={value}",
            )
        reply = link.request(m.GET_PARAM, param=0x7E, index=0)
        _require(
            reply.type == m.NACK and reply["error"] == m.ERR_UNKNOWN_PARAM,
            f"unknown parameter 0x7E: expected NACK 'unknown parameter', got {reply.name} {reply.fields}",
        )
        after = link.get_param("gain_db")
        _require(after == before, f"a refused request changed gain_db from {before} to {after}")
        return f"{len(cases) + 1} invalid requests refused with the right error code, nothing changed"

    def check_frozen(self) -> str:
        link = self.link
        _require(link.freeze(True) is True, "FREEZE did not report frozen")
        try:
            _expect_nack(
                lambda: link.set_param("gain_db", self.caps["gain_min"]),
                m.ERR_FROZEN,
                "set gain while frozen",
            )
        finally:
            _require(link.freeze(False) is False, "unfreeze did not report unfrozen")
        return "frozen device refuses changes with 'frozen'; unfreeze works"

    def check_frames(self) -> str:
        link, c = self.link, self.caps
        gain = c["gain_min"] + c["gain_step"] * round((c["gain_max"] - c["gain_min"]) / 3 / c["gain_step"])
        link.set_param("gain_db", gain)
        time.sleep(0.1)  # let frames acquired before the change drain
        start = link.stats()
        self.rec.clear()
        frames = []
        deadline = time.monotonic() + self.window
        while time.monotonic() < deadline:
            f = link.latest_frame(timeout=0.2)
            if f is not None:
                frames.append(f)
        end = link.stats()
        with self.rec.lock:
            headers = list(self.rec.headers)
        ok = end["frames_ok"] - start["frames_ok"]
        lost = end["frames_lost"] - start["frames_lost"]
        rejected = end["chunks_rejected"] - start["chunks_rejected"]
        expect = c["fps"] * self.window
        _require(
            lost == 0 and rejected == 0,
            f"{lost} frame(s) lost, {rejected} chunk(s) rejected in {self.window} s",
        )
        _require(
            ok >= 0.8 * expect,
            f"only {ok} complete frames in {self.window} s at an advertised {c['fps']} fps",
        )
        ids = [h["frame_id"] for h in headers]
        _require(
            all(b == a + 1 for a, b in itertools.pairwise(ids)), f"frame ids not consecutive: {ids[:12]}..."
        )
        ts = [h["device_ts_us"] for h in headers]
        _require(all(b > a for a, b in itertools.pairwise(ts)), "device timestamps of frames do not increase")
        for f in frames:
            _require(
                f.image.shape == (c["height"], c["width"]),
                f"frame {f.frame_id} is {f.image.shape}, advertised {c['height']}x{c['width']}",
            )
            _require(
                abs(f.params["gain_db"] - gain) < 1e-3,
                f"frame {f.frame_id} snapshot says gain {f.params['gain_db']}, device gain is {gain}",
            )
        return (
            f"{ok} frames in {self.window} s ({ok / self.window:.1f} fps), ids consecutive, snapshots match"
        )

    def check_heartbeat(self) -> str:
        with self.rec.lock:
            beats = list(self.rec.heartbeats)
        _require(
            len(beats) >= 2, f"{len(beats)} heartbeat(s) in {self.window} s; one is required every 0.2 s"
        )
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(beats)]
        _require(max(gaps) <= 0.5, f"heartbeat gap of {max(gaps):.2f} s (must be at most 0.5 s)")
        st = beats[-1][1]
        _require(
            0 <= st["battery_pct"] <= 100 and -20 <= st["temperature_c"] <= 90, f"implausible status {st}"
        )
        _require(
            st["boot_id"] == self.link.info.boot_id if self.link.info else False,
            "heartbeat boot id differs from IDENTIFY",
        )
        return f"{len(beats)} heartbeats, largest gap {max(gaps) * 1000:.0f} ms, {st['temperature_c']:.1f} °C, battery {st['battery_pct']}%"

    def check_time_sync(self) -> str:
        link = self.link
        samples = []
        for _ in range(5):
            t0 = link.clock()
            reply = link.request(m.TIME_SYNC_REQ, host_ts_us=int(t0 * 1e6))
            samples.append((t0, link.clock(), reply["device_ts_us"], reply["host_ts_us"]))
        _require(all(s[3] == int(s[0] * 1e6) for s in samples), "TIME_SYNC_RESP does not echo host_ts_us")
        dev = [s[2] for s in samples]
        _require(all(b > a for a, b in itertools.pairwise(dev)), f"device clock does not advance: {dev}")
        rtt = min(s[1] - s[0] for s in samples)
        _require(rtt < 0.05, f"best time-sync round trip {rtt * 1000:.1f} ms (must be under 50 ms)")
        link.sync_time()
        f = link.latest_frame(timeout=1.0)
        _require(f is not None, "no frame to check timestamp mapping")
        assert f is not None
        err = f.host_time - link.device_to_host_time(f.device_ts_us)
        _require(
            -0.005 < err < 0.2,
            f"frame timestamp maps {err * 1000:.1f} ms before its arrival (expected 0..200 ms)",
        )
        return f"round trip {rtt * 1000:.2f} ms; frame acquired {err * 1000:.1f} ms before it was received"

    def check_recovery_after_garbage(self) -> str:
        link = self.link
        with self.rec.lock:
            before = self.rec.heartbeats[-1][1]["rx_discarded_bytes"] if self.rec.heartbeats else None
        rng = random.Random(1)
        garbage = bytes(rng.randrange(256) for _ in range(1000)) + b"SG\x11\x00" + b"\xff" * 40
        link.write_raw(garbage)
        t0 = time.monotonic()
        value = link.get_param("depth_mm")
        took = time.monotonic() - t0
        _require(took < 1.0, f"device needed {took:.2f} s to answer after garbage")
        time.sleep(0.45)
        with self.rec.lock:
            after = self.rec.heartbeats[-1][1]["rx_discarded_bytes"] if self.rec.heartbeats else None
        _require(
            before is not None and after is not None and after > before,
            f"device does not count discarded bytes in its heartbeat (before {before}, after {after})",
        )
        assert before is not None and after is not None
        return f"answered in {took * 1000:.0f} ms after 1044 garbage bytes (depth {value}); device counted {after - before} discarded"


CHECKS = [
    ("identify", Conformance.check_identify),
    ("parameters-in-range", Conformance.check_params_in_range),
    ("parameters-out-of-range", Conformance.check_params_out_of_range),
    ("freeze", Conformance.check_frozen),
    ("frames", Conformance.check_frames),
    ("heartbeat", Conformance.check_heartbeat),
    ("time-sync", Conformance.check_time_sync),
    ("recovery-after-garbage", Conformance.check_recovery_after_garbage),
]


def run_conformance(url: str, name: str = "probe") -> list[CheckResult]:
    """Connect to the device at ``url`` and run every check; a failed connection is itself a failure."""
    link = ProbeLink(url, name=name, reconnect=False)
    try:
        link.start()
    except ProbeError as exc:
        return [CheckResult("identify", False, str(exc))]
    results = []
    try:
        suite = Conformance(link)
        restore = {n: link.get_param(n) for n in ("gain_db", "depth_mm", "freq_mhz")}
        for check_name, fn in CHECKS:
            try:
                results.append(CheckResult(check_name, True, fn(suite)))
            except (CheckFailed, ProbeError) as exc:
                results.append(CheckResult(check_name, False, str(exc)))
        for n, v in restore.items():
            with contextlib.suppress(ProbeError):
                link.set_param(n, v)
    finally:
        link.stop()
    return results
