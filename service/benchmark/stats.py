"""Benchmark arithmetic, pure: percentiles, latency from guidance timestamps, loss, /proc parsing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

SUSTAIN_RATE = 0.95  # a rate is sustained when at least this share of the frames comes out as guidance
SUSTAIN_LOSS = 0.01  # ... and at most this share of the frame ids is missing


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
    ``t.received`` with ``time.monotonic()`` (``service.clock.MonotonicClock``) when the frame, fully
    reassembled by the link, enters the pipeline: the same clock on the same host.
    """
    out = []
    for at, message in received:
        t = message.get("t") or {}
        if "received" in t:
            out.append((at - float(t["received"])) * 1000.0)
    return out


def frame_loss(frame_ids: Iterable[int]) -> float:
    """Share of frame ids missing between the first and last one seen (0 = none lost)."""
    ids = set(frame_ids)
    if len(ids) < 2:
        return 0.0
    span = max(ids) - min(ids) + 1
    return 1.0 - len(ids) / span


def sustained(target_fps: float, delivered_fps: float, loss: float) -> bool:
    return delivered_fps >= SUSTAIN_RATE * target_fps and loss <= SUSTAIN_LOSS


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
