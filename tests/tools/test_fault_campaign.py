"""The standing fault campaign's short version (issue 16): the real daemon (`sonoguide run`), a real
mosquitto and the emulator on a pty behind a link path, under line noise, a reboot, a command flood
and hypothesis-made commands. Nothing here times anything: each fault must be recovered from, with
no wrong write on the device, no false manual change, nothing lost and no crash. The long version is
``sonoguide faults --long`` (docs/reliability.md)."""

from __future__ import annotations

from firmware_bridge.emulator.state import Capabilities
from service.tools.fault_campaign import (
    IMAGE_ONLY_BASIS,
    SHORT,
    fuzzed_requests,
    judge_camera_loss,
    longest_gap,
    lost_event_count,
    out_of_caps,
    recovery,
    run_campaign,
)


def test_the_short_campaign_recovers_from_every_fault_with_nothing_wrong_lost_or_crashed() -> None:
    results = run_campaign(SHORT, "short", log=lambda s: None)
    assert [r.fault for r in results] == list(SHORT)
    for r in results:
        assert r.recovery_s is not None, r
        assert (r.wrong_writes, r.false_manual, r.lost_replies, r.lost_events, r.crashes) == (
            0,
            0,
            0,
            0,
            0,
        ), r
        assert r.requests > 0, r  # pings at least: the replies were checked under the fault


def test_the_campaign_judges_writes_gaps_and_sequences() -> None:
    caps = Capabilities(depths_mm=[20.0, 40.0, 60.0])
    assert out_of_caps("depth_mm", 120.0, caps) and not out_of_caps("depth_mm", 40.0, caps)
    assert out_of_caps("gain_db", 95.0, caps) and not out_of_caps("gain_db", 90.0, caps)
    assert out_of_caps("freq_mhz", 4.0, caps) and not out_of_caps("frozen", 1.0, caps)
    assert lost_event_count([1, 2, 5, 6], 0) == 2 and lost_event_count([1, 2, 5, 6], 2) == 0
    assert lost_event_count([3, 1, 2, 2], 0) == 0
    arrivals = [0.0, 0.1, 0.2, 1.5] + [1.5 + 0.05 * i for i in range(1, 12)]
    assert recovery(arrivals, 0.25) == 1.25 and recovery(arrivals[:6], 0.25) is None
    assert longest_gap(arrivals, 0.0, 3.0) == 1.3


def test_fuzzed_requests_are_reproducible_and_hostile() -> None:
    drawn = fuzzed_requests(200)
    assert drawn == fuzzed_requests(200) and len(drawn) == 200
    assert len({c for c, _ in drawn}) >= 5
    assert any(not p.startswith((b"{", b"[", b'"')) for _, p in drawn)  # not all JSON objects


def test_a_camera_loss_is_judged_from_what_the_display_received() -> None:
    """Tracked until 1.0 s, lost to 3.0 s (image-only from 1.3 s, a 0.4 s hole), tracked at 3.5 s."""
    arrivals = [i / 10 for i in range(50)]
    hole = {round(2.0 + 0.1 * i, 1) for i in range(1, 4)}
    guidance = [
        (t, "belief" if t < 1.3 or t >= 3.5 else IMAGE_ONLY_BASIS)
        for t in arrivals
        if round(t, 1) not in hole
    ]
    tracked = {"camera": {"state": "tracking"}, "guidance": {"basis": "belief"}}
    lost = {"camera": {"state": "lost"}, "guidance": {"basis": "model"}}
    statuses = [(0.5, tracked), (1.1, tracked), (2.5, lost), (2.7, lost), (4.5, tracked)]
    events = [{"kind": "warning", "message": "guidance restarted: the camera lost the probe for 5 s: ..."}]
    loss = judge_camera_loss("hand", guidance, statuses, events, 1.0, 3.0)
    assert (loss.held_s, loss.fallback_s, loss.image_only, loss.gap_s) == (2.0, 0.3, 1.0, 0.4)
    assert loss.camera_states == ("tracking", "lost") and loss.said_lost and loss.belief_restarts == 1
    assert loss.tracked_after_s == 0.5 and loss.rate_hz == 9.0 and loss.return_gap_s <= 0.11
    never = judge_camera_loss(
        "unplugged", [(t, IMAGE_ONLY_BASIS) for t in arrivals], statuses[:2], [], 1.0, 3.0
    )
    assert never.tracked_after_s is None and not never.said_lost and never.belief_restarts == 0
