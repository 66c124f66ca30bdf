"""The live terminal view of one device's MQTT topics, shared by ``sonoguide demo`` and ``sonoguide watch``.

:class:`ViewState` accumulates what the daemon publishes (pure: messages and times come in as
arguments); :func:`render_view` draws it as plain text and :func:`render_line` as one log line; both
are pure functions. :class:`LiveView` is the thin wrapper that owns the MQTT subscription and the
refresh loop: ANSI redraw about 5 times a second on a terminal, a plain line every second otherwise.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

log = logging.getLogger(__name__)

RATE_WINDOW_S = 2.0
STALE_S = 1.0  # guidance older than this is not shown as current (its MQTT expiry is 1 s too)


@dataclass
class ViewState:
    device: str | None = None  # None: the first device heard from
    available: str | None = None
    guidance: dict[str, Any] | None = None
    guidance_at: float | None = None
    settings: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    last_auto: dict[str, Any] | None = None
    last_auto_at: float | None = None
    last_event: dict[str, Any] | None = None  # the newest event that is not an automatic change
    captures: int = 0
    guidance_count: int = 0
    arrivals: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=512))
    extra: list[str] = field(default_factory=list)  # lines from the caller (the demo's ground truth)
    title: str = "sonoguide"

    def update(self, topic: str, payload: bytes, now: float) -> bool:
        """Take one MQTT message; False when it is not for this view (other device, command, junk)."""
        parts = topic.split("/", 2)
        if len(parts) != 3 or parts[0] != "sonoguide" or parts[2].startswith("cmd/"):
            return False
        device, name = parts[1], parts[2]
        if self.device is None:
            self.device = device
        elif device != self.device:
            return False
        if name == "available":
            self.available = payload.decode("utf-8", "replace")
            return True
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
        if not isinstance(body, dict):
            return False
        if name == "guidance":
            self.guidance, self.guidance_at = body, now
            self.guidance_count += 1
            self.arrivals.append(now)
        elif name == "settings":
            self.settings = body
        elif name == "status":
            self.status = body
        elif name == "events":
            if body.get("kind") == "auto_change":
                self.last_auto, self.last_auto_at = body, now
            else:
                self.last_event = body
            self.captures += body.get("kind") == "capture"
        else:
            return False
        return True

    def rate(self, now: float) -> float:
        """Guidance messages per second seen here over the last couple of seconds."""
        recent = [t for t in self.arrivals if now - t <= RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)


def _bar(value: float, width: int = 20) -> str:
    n = round(max(0.0, min(1.0, value)) * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def _num(value: Any, fmt: str = "{:g}") -> str:
    return "?" if value is None else fmt.format(value)


def _setting(settings: dict[str, Any], param: str, auto: str | None, unit: str) -> str:
    text = f"{_num(settings.get(param))} {unit}"
    if auto is None:
        return text
    if not settings.get("auto", {}).get(auto):
        return text + " (manual)"
    paused = settings.get("paused_s", {}).get(auto, 0)
    return text + (f" (auto, paused {paused:.0f} s)" if paused else " (auto)")


def latency_ms(guidance: dict[str, Any]) -> float | None:
    """Frame arrival to publication on the device (the stage timestamps share one clock)."""
    t = guidance.get("t", {})
    if "published" in t and "received" in t:
        return 1000.0 * (float(t["published"]) - float(t["received"]))
    return None


def render_view(state: ViewState, now: float | None = None) -> str:
    """The whole view as plain text (no escape codes), one line per fact."""
    now = time.monotonic() if now is None else now
    lines = [f"{state.title} - device {state.device or '(waiting for a device)'} ({state.available or '?'})"]
    lines.append("-" * 78)
    g = state.guidance
    fresh = g is not None and state.guidance_at is not None and now - state.guidance_at <= STALE_S
    if g is None:
        lines.append("  waiting for guidance ...")
    else:
        mark = ">>" if fresh else "(stale)"
        conf = f"confidence {g.get('confidence', 0):.2f}"
        lines.append(f"  {mark} {g.get('text', g.get('instruction', '?'))}    {conf}")
        lines.append(
            f"  quality {_bar(g.get('quality', 0))} {g.get('quality', 0):.2f}   "
            f"target visible {g.get('target_visible', 0):.2f}   contact {g.get('contact', 0):.2f}"
            + ("   FROZEN" if g.get("frozen") else "")
        )
    s = state.settings
    if s is not None:
        lines.append(
            f"  gain {_setting(s, 'gain_db', 'gain', 'dB')}   depth {_setting(s, 'depth_mm', 'depth', 'mm')}"
            f"   freq {_setting(s, 'freq_mhz', None, 'MHz')}"
        )
    else:
        lines.append("  settings: not yet published")
    if state.last_auto is not None:
        ago = "" if state.last_auto_at is None else f" ({now - state.last_auto_at:.0f} s ago)"
        lines.append(f"  last auto change: {state.last_auto.get('message', '')}{ago}")
    else:
        lines.append("  last auto change: none yet")
    if state.last_event is not None:
        lines.append(f"  last event: {state.last_event.get('kind')}: {state.last_event.get('message', '')}")
    lat = latency_ms(g) if g is not None else None
    perf = f"  guidance {state.rate(now):.1f}/s   latency {_num(lat, '{:.0f}')} ms"
    st = state.status
    if st is not None:
        model = st.get("model", {})
        perf += f"   probe {st.get('fps', 0):g} fps   model {model.get('name')} {model.get('version')}"
        perf += f" ({model.get('provider')})"
    lines.append(perf)
    if st is not None:
        lines.append(f"  camera: {st.get('camera', {}).get('state', '?')}   health: {st.get('health')}")
        lines.append(f"  status: {st.get('summary', '')}")
    lines.append(f"  captures: {state.captures}{_capture_queue(st)}")
    lines.extend(f"  {x}" for x in state.extra if x)
    return "\n".join(lines)


def _capture_queue(status: dict[str, Any] | None) -> str:
    """The store-and-forward state from ``status.captures`` (docs/captures.md), or nothing."""
    c = (status or {}).get("captures") or {}
    if not c.get("enabled"):
        return ""
    oldest = c.get("oldest_unsent_s")
    return (
        f"   saved {c.get('saved', 0)}, sent {c.get('sent', 0)}, queued {c.get('queued', 0)}"
        + (f" (oldest {oldest:.0f} s)" if oldest is not None else "")
        + f", PACS {c.get('pacs', '?')}, exam {c.get('exam', '?')}"
    )


def render_line(state: ViewState, now: float | None = None) -> str:
    """One line for logs and pipes (stdout not a terminal)."""
    now = time.monotonic() if now is None else now
    g, s = state.guidance or {}, state.settings or {}
    auto = state.last_auto.get("message", "") if state.last_auto else "-"
    lat = latency_ms(g) if g else None
    return (
        f"[{state.device or '?'} {state.available or '?'}] {g.get('text', 'waiting for guidance')}"
        f" | conf {g.get('confidence', 0):.2f} quality {g.get('quality', 0):.2f}"
        f" visible {g.get('target_visible', 0):.2f} contact {g.get('contact', 0):.2f}"
        f" | gain {_num(s.get('gain_db'))} dB depth {_num(s.get('depth_mm'))} mm"
        f" | {state.rate(now):.1f}/s latency {_num(lat, '{:.0f}')} ms | last auto: {auto}"
        + "".join(f" | {x}" for x in state.extra if x)
    )


class LiveView:
    """Subscribes to ``sonoguide/<device or +>/#`` and redraws the view until stopped."""

    def __init__(
        self,
        host: str,
        port: int,
        device: str | None = None,
        title: str = "sonoguide",
        out: IO[str] | None = None,
        live: bool | None = None,
        username: str = "",
        password: str = "",
        tls: bool = False,
    ) -> None:
        import paho.mqtt.client as mqtt

        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.state = ViewState(device=device, title=title)
        self.lock = threading.Lock()
        self.connected = threading.Event()
        topic = f"sonoguide/{device or '+'}/#"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"sonoguide-view-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        if username:
            self.client.username_pw_set(username, password or None)
        if tls:
            self.client.tls_set()

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if not rc.is_failure:
                client.subscribe(topic, qos=1)  # in on_connect: back after every reconnect
                self.connected.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self.lock:
                self.state.update(msg.topic, bytes(msg.payload), time.monotonic())

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]  # floats work
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def snapshot(self) -> dict[str, Any] | None:
        """The newest guidance message (for the demo's simulated novice)."""
        with self.lock:
            if self.state.guidance_at is None or time.monotonic() - self.state.guidance_at > STALE_S:
                return None
            return self.state.guidance

    def draw(self) -> None:
        with self.lock:
            text = render_view(self.state) if self.live else render_line(self.state)
        if self.live:  # home, clear to the end, draw: no scrolling, no flicker of a full clear
            self.out.write("\x1b[H\x1b[J" + text + "\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Redraw until ``stop`` is set or ``duration`` seconds passed (None or 0: until stopped)."""
        period = 0.2 if self.live else 1.0
        end = time.monotonic() + duration if duration else None
        if self.live:
            self.out.write("\x1b[2J\x1b[?25l")  # clear once, hide the cursor
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                self.draw()
                left = period if end is None else min(period, max(0.0, end - time.monotonic()))
                stop.wait(left)
            self.draw()
        finally:
            if self.live:
                self.out.write("\x1b[?25h")  # the cursor back
                self.out.flush()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
