"""The one owner of the probe's settings state, and of the events that tell the display about it.

What the daemon believes the probe is set to (gain, depth, frequency, frozen), whether auto-tuning may
touch each parameter (the auto flags and the pause after a manual change), the detector that tells a
manual change on the probe from the frames of our own changes, and the event sequence. Three parties
talk to it, each on its own thread, only through these methods: the pipeline's stages
(``service.daemon.pipeline``), the probe-link event handler (``service.daemon.link_events``) and the
MQTT command handlers (``service.daemon.mqtt_commands``). One re-entrant lock guards it all.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from service.daemon.clock import Clock
from service.daemon.config import AutoConfig
from service.daemon.probe import DEPTH, GAIN, TUNABLE
from service.policy.autotune import ManualChangeDetector, ManualOverride
from service.seams import Publisher

AUTO_PARAM = {"gain": GAIN, "depth": DEPTH}  # auto flag -> probe parameter


class ProbeState:
    def __init__(self, publisher: Publisher, clock: Clock, auto: AutoConfig, log: Any) -> None:
        self.publisher, self.clock, self.log = publisher, clock, log
        self._override = ManualOverride(auto.manual_pause_s)
        self._detector = ManualChangeDetector()
        self._auto_enabled = {"gain": auto.gain, "depth": auto.depth}
        self._frozen = False
        self._settings: dict[str, float | None] = dict.fromkeys(TUNABLE)
        self._lock = threading.RLock()  # settings, detector, auto flags: touched by several threads
        # Between a lost link and its restore the frames show the device's power-on settings (a
        # reboot) or another probe's: not a person's change, so they are not judged (issue 16).
        self._relinking = False
        self._event_seq = 0

    # --- reading -----------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def pause_s(self) -> float:
        """How long auto-tuning of a parameter pauses after a manual change of it."""
        return self._override.pause_s

    def setting(self, param: str) -> float | None:
        with self._lock:
            return self._settings.get(param)

    def snapshot(self) -> tuple[dict[str, float | None], dict[str, bool]]:
        """The settings and the auto flags, taken together."""
        with self._lock:
            return dict(self._settings), dict(self._auto_enabled)

    def paused(self, param: str, now: float) -> bool:
        """True while a manual change of ``param`` holds auto-tuning off it."""
        return self._override.paused(param, now)

    # --- what the frames say -----------------------------------------------------------------------

    def observe_frame(self, params: Mapping[str, Any], now: float) -> None:
        """A frame's parameters: a value we did not set is a manual change on the probe (it wins)."""
        with self._lock:
            if self._relinking:
                return
            for p in TUNABLE:
                if p not in params:
                    continue
                value = float(params[p])
                if self._detector.stale(p, value, now):
                    continue  # taken before our change: it does not undo the read-back
                if self._detector.observe(p, value, now):
                    self._manual_change(p, self._settings.get(p), value, "probe", now)
                self._settings[p] = value

    # --- our own changes (auto-tuning, display commands) ------------------------------------------

    def announce(self, param: str, value: float, slack: float) -> None:
        """We are about to set ``param``: frames at the new value may arrive before the read-back."""
        with self._lock:
            self._detector.announce(param, value, slack)

    def cancel(self, param: str) -> None:
        """The change announced for ``param`` did not happen."""
        with self._lock:
            self._detector.cancel(param)

    def confirm(self, param: str, readback: float, now: float) -> None:
        """The probe read back ``readback`` for ``param``: that is its setting now."""
        with self._lock:
            self._detector.expect(param, readback, now)
            self._settings[param] = readback

    def note_manual(self, param: str, now: float) -> None:
        """A manual setting (display command) was applied: auto-tuning of it pauses."""
        self._override.note_manual(param, now)

    # --- what the probe's buttons did (link events) ------------------------------------------------

    def manual_change_on_probe(self, param: str, value: float, now: float) -> None:
        """The probe reports a manual change: auto-tuning of it pauses at once; published."""
        with self._lock:
            old = self._settings.get(param)
            self._detector.expect(param, value, now)  # the frames to come are not news
            self._settings[param] = value
        self._manual_change(param, old, value, "probe", now)
        self.publish_settings()

    def link_lost(self) -> None:
        """The link went down: until it is restored, frames are not judged for manual changes."""
        with self._lock:
            self._relinking = True

    def probe_changed(self) -> None:
        """Another probe on the port: nothing known of the old one's settings carries over."""
        with self._lock:
            self._detector = ManualChangeDetector()
            self._settings = dict.fromkeys(TUNABLE)

    def link_restored(self, restored: list[dict[str, Any]], now: float) -> None:
        """The link is back; ``restored``: the settings it put back (``found`` on the device after a
        reboot, ``value`` ours). Both are ours to the detector, so neither frames still in flight at
        the power-on value nor those at the restored one count as a change on the probe."""
        with self._lock:
            for r in restored:
                p = str(r.get("param"))
                if p in TUNABLE and not r.get("index"):
                    self._detector.expect(p, float(r["found"]), now)
                    self._detector.expect(p, float(r["value"]), now)
                    self._settings[p] = float(r["value"])
            self._relinking = False

    def set_frozen(self, frozen: bool, source: str, message: str) -> None:
        """The probe's frozen state, as it reports it; an ``info`` event with ``message``; published."""
        self._frozen = bool(frozen)
        self.event("info", message, source=source)
        self.publish_settings()

    def set_auto(self, which: str, enabled: bool) -> None:
        with self._lock:
            self._auto_enabled[which] = enabled
        self.log.info("auto %s %s", which, "on" if enabled else "off")
        self.event("info", f"auto {which} {'on' if enabled else 'off'}", source="command")
        self.publish_settings()

    def _manual_change(self, param: str, old: float | None, new: float, source: str, now: float) -> None:
        self._override.note_manual(param, now)
        self.log.info(
            "manual change of %s on the %s: %s -> %s; auto paused %.0f s",
            param,
            source,
            old,
            new,
            self._override.pause_s,
        )
        self.event(
            "manual_change",
            f"{param} changed on the {source}; auto-tuning paused {self._override.pause_s:g} s",
            param=param,
            old=old,
            new=new,
            source=source,
            reason="manual change wins",
        )

    # --- publishing ---------------------------------------------------------------------------------

    def event(self, kind: str, message: str, **fields: Any) -> None:
        with self._lock:
            self._event_seq += 1
            seq = self._event_seq
        body = {"seq": seq, "time": round(self.clock.now(), 6), "kind": kind, "message": message}
        body.update({k: v for k, v in fields.items() if v is not None})
        self.publisher.publish_event(body)

    def settings_message(self) -> dict[str, Any]:
        now = self.clock.now()
        with self._lock:
            return {
                **{k: self._settings.get(k) for k in TUNABLE},
                "auto": dict(self._auto_enabled),
                "paused_s": {
                    w: float(round(self._override.remaining(p, now))) for w, p in AUTO_PARAM.items()
                },
                "frozen": self._frozen,
            }

    def publish_settings(self) -> None:
        self.publisher.publish_retained("settings", self.settings_message())
