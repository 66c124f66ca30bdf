"""Benchmark arithmetic, pure: percentiles, latency from guidance timestamps, loss, /proc parsing."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

SOURCE_SHARE = 0.95  # the input really arrived at the rate: frame ids advanced at >= 95% of the target
SUSTAIN_LOSS = 0.002  # "no loss": at most 1 frame in 500 without guidance (one scheduler hiccup)
BACKLOG_GROWTH_MS = 5.0  # "no growing backlog": median latency of the last third <= first third + 5 ms
STAGES = ("link", "received", "preprocessed", "inferred", "guided", "published")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a value that actually occurred; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return float(ordered[k])


def latencies_ms(received: Iterable[tuple[float, dict[str, Any]]]) -> list[float]:
    """Frame received by the host → guidance received by the subscriber, per message, in ms.

    ``received``: (subscriber's CLOCK_MONOTONIC at arrival, guidance message). The daemon stamps
    ``t.link`` with the link's ``time.monotonic()`` when the last chunk of the frame arrived (the frame
    fully received by the host); older daemons only have ``t.received`` (the frame entered the
    pipeline, a thread hand-off later). The same clock on the same host.
    """
    out = []
    for at, message in received:
        t = message.get("t") or {}
        start = t.get("link", t.get("received"))
        if start is not None:
            out.append((at - float(start)) * 1000.0)
    return out


def stage_breakdown_ms(received: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Where the time goes: p50/p99/max (ms) of each step between the daemon's stage stamps, and from
    ``published`` to the subscriber's arrival (paho's network thread, the broker, the subscriber)."""
    steps: dict[str, list[float]] = {}
    for at, message in received:
        t = dict(message.get("t") or {})
        t["subscriber"] = at
        names = [n for n in (*STAGES, "subscriber") if n in t]
        for a, b in itertools.pairwise(names):
            steps.setdefault(f"{a}->{b}", []).append((float(t[b]) - float(t[a])) * 1000.0)
    return {k: {q: v for q, v in summarize_latency(v).items() if q != "p90"} for k, v in steps.items()}


def backlog_growth_ms(values_ms: Sequence[float]) -> float | None:
    """Median latency of the last third minus that of the first third (in arrival order), in ms: a
    backlog that grows anywhere on the path (pipeline, paho's queue, the broker) shows as growth."""
    n = len(values_ms) // 3
    if n < 3:
        return None
    first, last = sorted(values_ms[:n]), sorted(values_ms[-n:])
    return round(last[n // 2] - first[n // 2], 2)


def frame_loss(frame_ids: Iterable[int]) -> float:
    """Share of frame ids missing between the first and last one seen (0 = none lost)."""
    ids = set(frame_ids)
    if len(ids) < 2:
        return 0.0
    span = max(ids) - min(ids) + 1
    return 1.0 - len(ids) / span


def rate_verdict(target_fps: float, source_fps: float, loss: float, growth_ms: float | None) -> str:
    """``sustained``; ``input_short`` (frames did not cross the pty at the target rate: the emulator
    and the daemon's link reader share the cores, so which one fell short is not known from here);
    ``lossy`` (frames arrived but some got no guidance); ``backlog`` (latency grew over the window)."""
    if source_fps < SOURCE_SHARE * target_fps:
        return "input_short"
    if loss > SUSTAIN_LOSS:
        return "lossy"
    if growth_ms is None or growth_ms > BACKLOG_GROWTH_MS:
        return "backlog"
    return "sustained"


def cpu_seconds_from_stat(stat: str, clock_ticks: int) -> float:
    """utime + stime (seconds) from the text of /proc/<pid>/stat (the name may contain spaces)."""
    rest = stat[stat.rindex(")") + 2 :].split()
    # After the name: state is field 3 of the man page, utime 14 and stime 15.
    return (int(rest[11]) + int(rest[12])) / clock_ticks


def rss_mb_from_status(status: str) -> float:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) < 3 or parts[2].lower() != "kb":
                raise ValueError(f"unexpected VmRSS line {line!r}")
            return int(parts[1]) / 1024.0
    raise ValueError("no VmRSS line (process gone, or not Linux)")


def summarize_latency(values_ms: Sequence[float]) -> dict[str, Any]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return {
        "p50": r(percentile(values_ms, 50)),
        "p90": r(percentile(values_ms, 90)),
        "p99": r(percentile(values_ms, 99)),
        "max": r(max(values_ms) if values_ms else None),
        "n": len(values_ms),
    }
