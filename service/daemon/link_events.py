"""What the pipeline does with probe-link events (``link.add_event_listener``, docs/architecture.md).

Called on the link's reader thread, so every branch is short: settings under the pipeline's lock,
then an MQTT publish (paho's publish only queues). A manual parameter change on the probe pauses
auto-tuning of it at once, before the first frame taken at the new value arrives; the frame snapshot
check in ``Pipeline.receive`` stays as the fallback for firmware that does not report changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.daemon.probe import TUNABLE

if TYPE_CHECKING:
    from service.daemon.pipeline import Pipeline


def handle_link_event(pipe: Pipeline, event: dict[str, Any]) -> None:
    kind, now = event.get("type"), pipe.clock.now()
    param, value = event.get("param"), float(event.get("value") or 0.0)
    if kind == "param_changed" and event.get("source") == "manual" and param in TUNABLE:
        with pipe._lock:
            old = pipe.settings.get(param)
            pipe.detector.expect(param, value, now)  # the frames to come are not news
            pipe.settings[param] = value
        pipe._manual_change(param, old, value, "probe", now)
        pipe.publish_settings()
    elif kind == "freeze_button" or (kind == "param_changed" and param == "frozen"):
        pipe.frozen = bool(value)
        pipe.event("info", "image frozen on the probe" if pipe.frozen else "image live again", source="probe")
        pipe.publish_settings()
    elif kind == "capture_button":
        frame_id = pipe.last_frame_id
        pipe.event(
            "capture",
            f"capture of frame {frame_id} (probe button)",
            source="probe",
            **({"frame_id": frame_id} if frame_id is not None else {}),
        )
    elif kind == "over_temperature":
        pipe.log.warning("probe over temperature: %s °C", value)
        pipe.event("warning", f"probe over temperature ({value:.1f} °C): let it cool", source="probe")
    elif kind == "temperature_ok":
        pipe.event("info", f"probe temperature back to normal ({value:.1f} °C)", source="probe")
    elif kind == "link_lost":  # (heartbeat_lost is always followed by link_lost)
        reason = event.get("reason", "unknown reason")
        pipe.event("warning", f"probe link lost ({reason}); reconnecting", source="probe")
    elif kind == "link_restored":
        pipe.event("info", "probe link restored", source="probe")
