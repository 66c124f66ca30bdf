"""Hostile and careless MQTT clients against the real daemon (real pty + emulator, real mosquitto).

Each request gets an answer that names the problem; nothing a requester sends is echoed unbounded
into a reply or the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.mqtt.bounded_json import MAX_PAYLOAD_BYTES, InputError, loads_bounded
from service.mqtt.rate_limit import RateLimiter
from service.tools.local_broker import LocalBroker
from tests.daemon.test_daemon import Bench
from tests.service_bench import EmulatedProbe


@pytest.fixture
def bench(broker: LocalBroker) -> Iterator[Bench]:
    b = Bench(broker, EmulatedProbe(), auto={"gain": False, "depth": False})
    yield b
    b.close()
    assert not b.recorder.invalid, b.recorder.invalid


def test_hostile_payloads_get_bounded_answers_naming_the_problem(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    rec, emu = bench.recorder, bench.probe.emulator
    gain_before = emu.params.gain_db
    huge = "A" * (16 * 1024 * 1024)
    cases: dict[str, tuple[bytes, str]] = {
        "deep nesting": (b'{"param": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests"),
        "5000 digits": (b'{"param": "gain_db", "value": ' + b"9" * 5000 + b"}", "too long"),
        "400 digits": (b'{"param": "gain_db", "value": ' + b"9" * 400 + b"}", "too long"),
        "1e999": (b'{"param": "gain_db", "value": 1e999}', "not finite"),
        "NaN": (b'{"param": "gain_db", "value": NaN}', "NaN is not a JSON number"),
        "Infinity": (b'{"param": "gain_db", "value": -Infinity}', "-Infinity is not a JSON number"),
        "16 MB string": (('{"name": "' + huge + '"}').encode(), "too large"),
        "long enum value": (('{"param": "' + "x" * 10_000 + '", "value": 1}').encode(), "is not one of"),
        "many unknown fields": (("{" + ",".join(f'"k{i}": 1' for i in range(1000)) + "}").encode(), "more"),
    }
    caplog.set_level(logging.DEBUG)
    for label, (raw, fragment) in cases.items():
        command = "preset" if label == "16 MB string" else "set_param"
        reply = rec.request(command, raw=raw, timeout=10)
        assert reply["ok"] is False, label
        assert fragment in reply["error"], (label, reply["error"])
        assert "internal error" not in reply["error"], (label, reply["error"])
        assert len(reply["error"]) < 600, (label, len(reply["error"]))
    long_name = "x" * 5000
    reply = rec.request(long_name, raw=b"{}")
    assert reply["ok"] is False and "unknown command" in reply["error"]
    assert len(reply["command"]) <= 65 and len(reply["error"]) < 600
    assert len(caplog.text) < 20_000, "hostile input was echoed into the log"
    assert emu.params.gain_db == gain_before  # nothing was applied
    assert rec.request("ping")["ok"]  # and the daemon still serves


def test_bounded_json_accepts_ordinary_requests_and_names_each_refusal() -> None:
    assert loads_bounded(b'{"param": "gain_db", "value": 42.5, "n": [1, {"a": null}]}') == {
        "param": "gain_db",
        "value": 42.5,
        "n": [1, {"a": None}],
    }
    assert loads_bounded(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[\\""}') == {"s": '[[[[[[[[[[[[[[[[[[[[[[["'}
    for raw, fragment in [
        (b"[" * 9 + b"]" * 9, "nests 9 levels"),
        (b"1" * 33, "too long"),
        (b"NaN", "NaN is not"),
        (b"\xff{}", "not UTF-8"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "too large"),
    ]:
        with pytest.raises(InputError, match=fragment):
            loads_bounded(raw)


def _publish_once(port: int, topic: str, payload: bytes, retain: bool) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def _retained_on(port: int, topic: str, wait_s: float = 1.0) -> list[bytes]:
    """What the broker still keeps retained on ``topic`` (a fresh subscriber's view)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(bytes(m.payload)) if m.retain else None
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(5)
    time.sleep(wait_s)  # retained messages come right after SUBACK; nothing else to wait on
    client.loop_stop()
    client.disconnect()
    return got


def test_retained_commands_are_refused_and_cleared(broker: LocalBroker) -> None:
    gain_zero = b'{"param": "gain_db", "value": 0}'
    cmd = ""

    def leave_a_retained_command(config: Any) -> None:
        nonlocal cmd
        cmd = f"sonoguide/{config.device.id}/cmd/set_param"
        _publish_once(broker.port, cmd, gain_zero, retain=True)

    bench = Bench(broker, EmulatedProbe(), before_start=leave_a_retained_command, auto={"gain": False})
    try:
        mqtt_api = bench.daemon.mqtt
        assert bench.recorder.wait_for(lambda: mqtt_api.stats.get("retained_refused", 0) >= 1, 5)
        assert bench.probe.emulator.params.gain_db != 0  # the retained command never ran
        assert _retained_on(broker.port, cmd) == []  # and it is gone from the broker's store
        # Published retained while the daemon runs: refused the same way.
        _publish_once(broker.port, cmd, gain_zero, retain=True)
        assert bench.recorder.wait_for(lambda: mqtt_api.stats.get("retained_refused", 0) >= 2, 5)
        assert bench.probe.emulator.params.gain_db != 0
        assert _retained_on(broker.port, cmd) == []
        assert bench.recorder.request("set_param", {"param": "gain_db", "value": 10})["ok"]  # plain: runs
        assert bench.probe.emulator.params.gain_db == 10
    finally:
        bench.close()


def test_replies_only_under_the_reply_namespace_and_unanswered_elsewhere(bench: Bench) -> None:
    rec = bench.recorder
    stats = bench.daemon.mqtt.stats
    for target in ["guidance", "status", "events", "available", "reply", "reply/x"]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = rec.root + target
        props.CorrelationData = b"c" * 10
        rec.client.publish(rec.root + "cmd/capture", b"{}", qos=1, properties=props).wait_for_publish(5)
    assert rec.wait_for(lambda: stats.get("replies_refused", 0) >= 6, 5)
    assert rec.request("ping")["ok"]  # after the refused ones: had they been answered, it would show
    for name in ["guidance", "status", "events"]:
        assert not [m for m in rec.of(name) if "command" in m.payload], name
    assert not [m for m in rec.of("available") if m.payload not in ("online", "offline", "stopped")]
    assert not bench.events("capture")  # the misdirected commands did not run


def test_a_flood_of_commands_is_answered_busy_and_nothing_is_lost_uncounted(bench: Bench) -> None:
    rec = bench.recorder
    n = 2000
    corrs = [f"flood-{i}".encode() for i in range(n)]
    seq_before = max((m.payload["seq"] for m in rec.of("events")), default=0)  # seq starts at 1
    for i, corr in enumerate(corrs):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = rec.reply_topic
        props.CorrelationData = corr
        body = json.dumps({"param": "gain_db", "value": 10.0 + 10.0 * (i % 2)}).encode()
        rec.client.publish(rec.root + "cmd/set_param", body, qos=1, properties=props)
    stats = bench.daemon.mqtt.stats
    # A reply that found paho's outgoing queue full (the broker acknowledging slower than the flood
    # comes in; how many depends on the machine) is dropped and counted, never silently lost.
    assert rec.wait_for(lambda: sum(c in rec.replies for c in corrs) + stats["replies_dropped"] == n, 90), (
        f"{sum(c not in rec.replies for c in corrs)} of {n} requests got no reply, "
        f"{stats['replies_dropped']} replies counted as dropped"
    )
    replies = [rec.replies[c] for c in corrs if c in rec.replies]
    busy = [r for r in replies if not r["ok"]]
    assert busy and all(r["error"].startswith("busy") and r["retry_after_s"] > 0 for r in busy), busy[:3]
    assert sum(r["ok"] for r in replies) >= 40  # the burst, then the steady rate, ran
    # Every change event either arrived or is counted in status.
    t = time.monotonic()
    assert rec.wait_for(lambda: bool(rec.of("status", since=t + 0.6)), 10)
    losses = rec.of("status")[-1].payload["mqtt"]
    seqs = sorted(m.payload["seq"] for m in rec.of("events") if m.payload["seq"] > seq_before)
    missing = (seqs[-1] - seq_before) - len(seqs) if seqs else 0
    assert missing == losses["events_dropped"], (missing, losses)
    unanswered = n - len(replies)
    assert losses["replies_dropped"] == unanswered, (unanswered, losses)
    assert losses["commands_busy"] >= len(busy) and losses["commands_busy"] <= len(busy) + unanswered, losses


def test_rate_limiter_bursts_then_holds_the_rate_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=10, burst=3, clock=lambda: now[0])
    assert [limiter.admit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.admit("a") == pytest.approx(0.1)  # retry after one token's time
    assert limiter.admit("b") == 0.0  # another client is not held up by "a"
    now[0] = 0.1
    assert limiter.admit("a") == 0.0 and limiter.admit("a") > 0
