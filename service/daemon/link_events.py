"""What the daemon does with probe-link events (``link.add_event_listener``, docs/architecture.md).

Called on the link's reader thread, so every branch is short: the probe's settings state changes
through :class:`~service.daemon.probe_state.ProbeState`'s methods (under its lock), then an MQTT
publish (paho's publish only queues). A manual parameter change on the probe pauses auto-tuning of it
at once, before the first frame taken at the new value arrives; the frame snapshot check in
``ProbeState.observe_frame`` stays as the fallback for firmware that does not report changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.daemon.probe import TUNABLE
from service.daemon.probe_state import ProbeState


def handle_link_event(
    state: ProbeState, event: dict[str, Any], last_frame_id: Callable[[], int | None]
) -> None:
    kind, now = event.get("type"), state.clock.now()
    param, value = event.get("param"), float(event.get("value") or 0.0)
    if kind == "param_changed" and event.get("source") == "manual" and param in TUNABLE:
        state.manual_change_on_probe(str(param), value, now)
    elif kind == "freeze_button" or (kind == "param_changed" and param == "frozen"):
        frozen = bool(value)
        state.set_frozen(frozen, "probe", "image frozen on the probe" if frozen else "image live again")
    elif kind == "capture_button":
        frame_id = last_frame_id()
        state.event(
            "capture",
            f"capture of frame {frame_id} (probe button)",
            source="probe",
            **({"frame_id": frame_id} if frame_id is not None else {}),
        )
    elif kind == "over_temperature":
        state.log.warning("probe over temperature: %s °C", value)
        state.event("warning", f"probe over temperature ({value:.1f} °C): let it cool", source="probe")
    elif kind == "temperature_ok":
        state.event("info", f"probe temperature back to normal ({value:.1f} °C)", source="probe")
    elif kind == "link_lost":  # (heartbeat_lost is always followed by link_lost)
        reason = event.get("reason", "unknown reason")
        state.link_lost()
        state.event("warning", f"probe link lost ({reason}); reconnecting", source="probe")
    elif kind == "probe_changed":
        new, old = event.get("new", {}), event.get("old", {})
        state.probe_changed()
        state.event(
            "warning",
            f"a different probe is connected ({new.get('model')} serial {new.get('serial')}, was "
            f"{old.get('model')} serial {old.get('serial')}): its own limits apply, no settings restored",
            source="probe",
        )
    elif kind == "link_restored":
        state.link_restored(list(event.get("restored") or []), now)
        state.event("info", "probe link restored", source="probe")
