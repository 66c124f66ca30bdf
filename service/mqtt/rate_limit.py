"""Per-client command rate limit: a token bucket per requester, on an injected clock (pure, no threads).

A flood from one display (2000 ``set_param`` in 5 s) must not starve the others or fill the outgoing
queue until replies and events are lost: beyond its rate a client gets "busy, retry after" at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate_per_s`` commands per second per client, bursts of up to ``burst``."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float], max_clients: int = 256
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_clients = max_clients  # buckets kept; the least recently seen is forgotten (bounded)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, client: str) -> float:
        """0.0 when ``client`` may run a command now (and it is counted); else seconds to wait."""
        now = self.clock()
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        self._buckets[client] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s
