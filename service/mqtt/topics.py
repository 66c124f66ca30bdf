"""THE table of the MQTT API. Code, docs/mqtt/*.schema.json and docs/mqtt/asyncapi.yaml derive from it.

Every topic lives under ``sonoguide/<device_id>/``. Direction is the daemon's view: ``publish`` topics
are written by the daemon, ``subscribe`` topics (commands) are read by it. Commands use MQTT 5
request/response: the requester sets the response topic and correlation data; the reply goes there
with the same correlation data and validates against ``response_schema``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ROOT = "sonoguide"
Schema = dict[str, Any]


@dataclass(frozen=True)
class Topic:
    name: str  # relative to sonoguide/<device_id>/
    direction: str  # "publish" | "subscribe" (from the daemon's side)
    qos: int
    retain: bool
    expiry_s: int | None  # MQTT 5 message expiry interval
    schema: Schema  # JSON Schema of the payload (UTF-8 JSON, or a JSON string for `available`)
    description: str
    response_schema: Schema | None = None  # commands only

    @property
    def is_command(self) -> bool:
        return self.name.startswith("cmd/")

    @property
    def file_stem(self) -> str:
        return self.name.replace("/", "-")


def _obj(props: dict[str, Schema], required: list[str] | None = None, extra: bool = False) -> Schema:
    return {
        "type": "object",
        "properties": props,
        "required": sorted(props) if required is None else required,
        "additionalProperties": extra,
    }


_NUM: Schema = {"type": "number"}
_UNIT: Schema = {"type": "number", "minimum": 0, "maximum": 1}
_STR: Schema = {"type": "string"}
_OPT_NUM: Schema = {"type": ["number", "null"]}
_OPT_STR: Schema = {"type": ["string", "null"]}
_PARAM_NAMES = ["gain_db", "depth_mm", "freq_mhz"]
_AUTO_NAMES = ["gain", "depth"]
INSTRUCTIONS = [
    "slide_head", "slide_feet", "slide_left", "slide_right", "rotate_cw", "rotate_ccw",
    "tilt_head", "tilt_feet", "tilt_left", "tilt_right", "rock_head", "rock_feet", "rock_left",
    "rock_right", "press", "more_gel", "scan", "hold_still", "good_view",
]  # fmt: skip

MODEL_STEPS = [
    "start", "install_started", "installed", "install_refused", "golden_passed", "activation_refused",
    "pending", "activated", "probation_passed", "rolled_back",
]  # fmt: skip

_STAGE_TIMES = _obj(
    {
        "device_us": {"type": "integer", "description": "probe timestamp of the frame (µs)"},
        "link": {**_NUM, "description": "host monotonic time the link finished reassembling the frame (s)"},
        "received": {**_NUM, "description": "host monotonic time the frame entered the pipeline (s)"},
        "preprocessed": _NUM,
        "inferred": _NUM,
        "guided": _NUM,
        "published": _NUM,
    },
    required=["device_us", "guided", "inferred", "preprocessed", "published", "received"],
)

GUIDANCE_SCHEMA = _obj(
    {
        "seq": {"type": "integer", "minimum": 0},
        "frame_id": {"type": "integer", "minimum": 0},
        "instruction": {"type": "string", "enum": INSTRUCTIONS},
        "text": {**_STR, "description": "the instruction in words, with its magnitude"},
        "magnitude": {"type": "number", "minimum": 0},
        "unit": {"type": "string", "enum": ["mm", "deg", ""]},
        "confidence": _UNIT,
        "quality": _UNIT,
        "target_visible": _UNIT,
        "contact": _UNIT,
        "basis": {
            "type": "string",
            "enum": ["belief", "camera", "assumed_marker_toward_head"],
            "description": "belief: the correction is the target belief's (model outputs fused over the "
            "tracked poses) and directions come from the tracked pose; camera: the image's correction, "
            "directions from the tracked pose; assumed_marker_toward_head: the image alone, directions "
            "in the default hold",
        },
        "frozen": {"type": "boolean"},
        "t": {**_STAGE_TIMES, "description": "per-stage host monotonic timestamps (s) for latency"},
    }
)

STATUS_SCHEMA = _obj(
    {
        "probe": _obj(
            {
                "state": {
                    "type": "string",
                    "enum": ["ok", "frozen", "absent", "no_frames", "error"],
                    "description": "frozen: the probe is frozen, so no frames come (a state, not a fault); "
                    "absent: no probe answers on the port; the daemon waits for it",
                },
                "port": _STR,
                "info": _STR,
                "detail": {
                    **_STR,
                    "description": "only while absent, when the port says why: gone (a re-created pty or a "
                    "replugged device under a new name, a link left dangling) or a name another device may "
                    "hold now; with what to configure instead",
                },
            },
            required=["state", "port", "info"],
        ),
        "camera": _obj(
            {
                "state": {
                    "type": "string",
                    "enum": ["none", "tracking", "searching", "lost", "uncalibrated", "absent"],
                },
                "source": _STR,
            }
        ),
        "guidance": _obj(
            {
                "basis": {
                    "type": "string",
                    "enum": ["belief", "model"],
                    "description": "belief: the target belief from the tracked probe; model: the image alone",
                }
            }
        ),
        "model": _obj(
            {
                "name": _STR,
                "version": _STR,
                "provider": _STR,
                "gpu_warning": {
                    **_STR,
                    "description": "only when an NVIDIA GPU is present but the model runs on the CPU: why "
                    "(no GPU provider in this ONNX Runtime build, or its libraries do not load)",
                },
                "pending": {**_OPT_STR, "description": "a version loaded and waiting for a safe moment"},
                "previous": {**_OPT_STR, "description": "the version a rollback returns to"},
                "probation": _obj(
                    {
                        "state": {
                            "type": "string",
                            "enum": ["none", "watching", "passed", "failed", "cancelled"],
                        },
                        "version": _STR,
                        "remaining_s": {"type": "number", "minimum": 0},
                        "frames": {"type": "integer", "minimum": 0},
                        "reason": _STR,
                    },
                    required=["state"],
                ),
            },
            required=["name", "version", "provider"],
        ),
        "fps": {"type": "number", "minimum": 0},
        "health": {"type": "string", "enum": ["starting", "ok", "degraded"]},
        "summary": _STR,
        "dropped": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0},
            "description": "frames dropped per stage hand-off (latest value wins)",
        },
        "captures": {
            **_obj(
                {
                    "enabled": {"type": "boolean", "description": "false: no capture store on this daemon"},
                    "queued": {"type": "integer", "minimum": 0, "description": "captures not yet sent"},
                    "awaiting_commitment": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "stored on the PACS, its Storage Commitment not yet received",
                    },
                    "oldest_unsent_s": {
                        "type": ["number", "null"],
                        "minimum": 0,
                        "description": "age of the oldest unsent capture (s)",
                    },
                    "failed": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "refused by the PACS for good",
                    },
                    "saved": {"type": "integer", "minimum": 0},
                    "sent": {"type": "integer", "minimum": 0},
                    "refused": {"type": "integer", "minimum": 0, "description": "not taken (quota, disk)"},
                    "used_mb": {"type": "number", "minimum": 0},
                    "quota_mb": {"type": "number", "minimum": 0},
                    "pacs": {"type": "string", "enum": ["ok", "down", "none", "unknown"]},
                    "disk_full": {
                        "type": "boolean",
                        "description": "the last capture found the captures filesystem full (refused)",
                    },
                    "exam": {"type": "string", "enum": ["open", "unassigned"]},
                },
                required=["enabled"],
            ),
            "description": "store-and-forward of captures to the PACS (docs/captures.md)",
        },
        "uptime_s": {"type": "number", "minimum": 0},
        "version": _STR,
        "mqtt": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0},
            "description": "messages the MQTT side did not deliver or run, by kind, since start: "
            "guidance_dropped, events_dropped, replies_dropped (outgoing queue full or no connection), "
            "commands_busy (over the per-client rate or the pending limit; answered 'busy'), "
            "replies_refused (response topic outside the requester's namespace), retained_refused",
        },
    }
)

SETTINGS_SCHEMA = _obj(
    {
        "gain_db": _OPT_NUM,
        "depth_mm": _OPT_NUM,
        "freq_mhz": _OPT_NUM,
        "auto": _obj({"gain": {"type": "boolean"}, "depth": {"type": "boolean"}}),
        "paused_s": _obj(
            {"gain": {"type": "number", "minimum": 0}, "depth": {"type": "number", "minimum": 0}},
        ),
        "frozen": {"type": "boolean"},
    }
)

EVENT_SCHEMA = _obj(
    {
        "seq": {"type": "integer", "minimum": 0},
        "time": _NUM,
        "kind": {
            "type": "string",
            "enum": [
                "auto_change",
                "manual_change",
                "capture",
                "capture_saved",
                "capture_sent",
                "capture_failed",
                "exam",
                "warning",
                "info",
                "model",
            ],
            "description": "capture: a frame chosen; capture_saved: its DICOM file is on the device's disk; "
            "capture_sent: the PACS confirmed it; capture_failed: refused or not sent yet (reason)",
        },
        "message": _STR,
        "param": {"type": "string", "enum": _PARAM_NAMES},
        "old": _OPT_NUM,
        "new": _OPT_NUM,
        "reason": _STR,
        "frame_id": {"type": "integer", "minimum": 0},
        "source": {"type": "string", "enum": ["auto", "probe", "command"]},
        "step": {
            "type": "string",
            "enum": MODEL_STEPS,
            "description": "model updates (kind model, or warning when refused or rolled back): which step",
        },
        "model_version": _STR,
        "key_id": {**_STR, "description": "the vendor key that signed the version"},
        "at": {**_STR, "description": "UTC wall-clock time of a model update step (audit)"},
        "sop_instance_uid": {"type": "string", "maxLength": 64},
    },
    required=["seq", "time", "kind", "message"],
)

RESPONSE_SCHEMA = _obj(
    {
        "ok": {"type": "boolean"},
        "command": _STR,
        "result": {"type": "object"},
        "error": _STR,
        "progress": {**_STR, "description": "a step of a long command; the final reply has result or error"},
        "retry_after_s": {
            "type": "number",
            "minimum": 0,
            "description": "with a 'busy' error: send again after this many seconds",
        },
    },
    required=["ok", "command"],
)

_EMPTY = _obj({})
_VERSION: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 32,
    "description": "e.g. 1.5.0, or factory",
}
_MODEL_RESULT = _obj(
    {
        "state": {"type": "string", "enum": ["installed", "pending", "probation", "active"]},
        "version": _STR,
    },
    required=["version"],
    extra=True,
)
_TEXT = {"type": "string", "maxLength": 64}
EXAM_REQUEST_SCHEMA = _obj(
    {
        "patient_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "patient_name": {**_TEXT, "description": "DICOM person name, Family^Given^Middle^Prefix^Suffix"},
        "birth_date": {"type": "string", "maxLength": 8, "description": "YYYYMMDD"},
        "sex": {"type": "string", "enum": ["M", "F", "O", ""]},
        "accession_number": {"type": "string", "maxLength": 16},
        "study_id": {"type": "string", "maxLength": 16},
        "study_description": _TEXT,
        "referring_physician": _TEXT,
        "study_instance_uid": {**_TEXT, "description": "from the worklist; a new one when absent"},
    },
    required=["patient_id"],
)
_EXAM_RESULT = _obj({"study_instance_uid": _STR, "patient_id": _STR, "unassigned": {"type": "boolean"}})


def _cmd(name: str, request: Schema, result: Schema, description: str) -> Topic:
    response = {
        **RESPONSE_SCHEMA,
        "properties": {**RESPONSE_SCHEMA["properties"], "result": result},
    }
    return Topic(f"cmd/{name}", "subscribe", 1, False, None, request, description, response)


TOPICS: tuple[Topic, ...] = (
    Topic(
        "available",
        "publish",
        1,
        True,
        None,
        {"type": "string", "enum": ["online", "offline", "stopped"]},
        "`online` on connect; `offline` as the last will when the daemon vanishes; `stopped` on clean exit."
        " The payload is the bare word (not JSON).",
    ),
    Topic(
        "status",
        "publish",
        1,
        True,
        None,
        STATUS_SCHEMA,
        "Health of probe, camera and model; every few seconds.",
    ),
    Topic(
        "settings",
        "publish",
        1,
        True,
        None,
        SETTINGS_SCHEMA,
        "Imaging settings and auto-tuning flags; on change.",
    ),
    Topic(
        "guidance",
        "publish",
        0,
        False,
        1,
        GUIDANCE_SCHEMA,
        "One instruction per processed frame. Expires after 1 s: stale guidance is worse than none.",
    ),
    Topic(
        "events", "publish", 1, False, None, EVENT_SCHEMA, "Automatic and manual changes, captures, warnings."
    ),
    _cmd(
        "ping",
        _EMPTY,
        _obj({"pong": {"type": "boolean"}, "version": _STR, "uptime_s": _NUM}),
        "Liveness check.",
    ),
    _cmd(
        "set_auto",
        _obj({"param": {"type": "string", "enum": _AUTO_NAMES}, "enabled": {"type": "boolean"}}),
        _obj({"param": _STR, "enabled": {"type": "boolean"}}),
        "Switch auto gain or auto depth on or off.",
    ),
    _cmd(
        "set_param",
        _obj({"param": {"type": "string", "enum": _PARAM_NAMES}, "value": _NUM}),
        _obj({"param": _STR, "value": _NUM, "auto_paused_s": {"type": "number", "minimum": 0}}),
        "A manual setting from the display: wins over auto-tuning, which pauses for [auto] manual_pause_s.",
    ),
    _cmd(
        "step_param",
        _obj(
            {
                "param": {"type": "string", "enum": _PARAM_NAMES},
                "steps": {"type": "integer", "minimum": -10, "maximum": 10},
            }
        ),
        _obj({"param": _STR, "value": _NUM, "auto_paused_s": {"type": "number", "minimum": 0}}),
        "A manual change by whole steps of the probe's own (gain step, next depth or frequency): the "
        "display's up/down buttons, which need not know the probe. Refused beyond the probe's range.",
    ),
    _cmd(
        "preset",
        _obj({"name": {"type": "string", "minLength": 1, "maxLength": 64}}),
        _obj({"name": _STR, "settings": {"type": "object"}}),
        "Apply an exam preset (its gain, depth and frequency), as a manual change.",
    ),
    _cmd(
        "freeze",
        _obj({"frozen": {"type": "boolean"}}),
        _obj({"frozen": {"type": "boolean"}}),
        "Freeze or unfreeze the image; guidance and auto-tuning pause while frozen.",
    ),
    _cmd(
        "capture", _EMPTY, _obj({"frame_id": {"type": ["integer", "null"]}}), "Capture the current frame now."
    ),
    _cmd(
        "exam_start",
        EXAM_REQUEST_SCHEMA,
        _EXAM_RESULT,
        "Open an exam: the captures from now on belong to this patient and study (entered by hand or "
        "picked from `cmd/worklist`). An exam already open is closed first.",
    ),
    _cmd(
        "exam_end",
        _EMPTY,
        _EXAM_RESULT,
        'Close the open exam; later captures go to the device\'s "unassigned" study of the day.',
    ),
    _cmd(
        "worklist",
        _obj(
            {
                "patient_id": {"type": "string", "maxLength": 64},
                "patient_name": {**_TEXT, "description": "DICOM wildcards * and ? allowed"},
                "date": {"type": "string", "maxLength": 8, "description": "scheduled date, YYYYMMDD"},
            },
            required=[],
        ),
        _obj({"items": {"type": "array", "items": {"type": "object"}}, "truncated": {"type": "boolean"}}),
        "Query the Modality Worklist ([worklist]); each item holds the fields `cmd/exam_start` takes.",
    ),
    _cmd(
        "calibrate_camera",
        _EMPTY,
        _obj({"residual_mm": _NUM}, required=[], extra=True),
        "Find the calibration stickers and compute the camera-to-patient transform.",
    ),
    _cmd(
        "install_model",
        _obj(
            {
                "path": {"type": "string", "minLength": 1, "maxLength": 4096},
                "activate": {"type": "boolean"},
                "force": {"type": "boolean"},
                "allow_downgrade": {"type": "boolean"},
            },
            required=["path"],
        ),
        _MODEL_RESULT,
        "Verify a signed model bundle on the device (signature, key, expiry, hashes, contract, golden vectors"
        " on this execution provider) and add it to the store; with activate, then activate it. Progress"
        " replies carry `progress`; the old model serves throughout and on any refusal.",
    ),
    _cmd(
        "activate_model",
        _obj(
            {"version": _VERSION, "force": {"type": "boolean"}, "allow_downgrade": {"type": "boolean"}},
            required=["version"],
        ),
        _MODEL_RESULT,
        "Load an installed version beside the serving one, check its golden vectors, warm it up, and swap"
        " between two frames at the next safe moment (frozen, or no skin contact for [model] safe_after_s;"
        " `force` swaps now). A probation follows; a failure rolls back by itself.",
    ),
    _cmd(
        "rollback_model",
        _obj({"reason": {"type": "string", "maxLength": 500}}, required=[]),
        _MODEL_RESULT,
        "Back to the previous version now (the factory model when there is none).",
    ),
)

BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
COMMANDS: dict[str, Topic] = {t.name.removeprefix("cmd/"): t for t in TOPICS if t.is_command}


def topic_path(device_id: str, name: str) -> str:
    return f"{ROOT}/{device_id}/{name}"


# --- Who may be answered where (the daemon must not be a confused deputy) -----------------------------
# A command arrives on cmd/<name>/<client> from an account the broker's ACL lets publish only with its
# own name as <client> (displays: `pattern write sonoguide/+/cmd/+/%u`; the site bridge: `site`); its
# reply may only go under reply/<client>/, which the same ACL grants that account. The bare
# cmd/<name> is for the trusted local listeners (the daemon's host, no ACL): replies under reply/.
COMMAND_FILTERS = ("cmd/+", "cmd/+/+")
REPLY_ROOT = "reply"
MAX_RESPONSE_TOPIC_CHARS = 256
MAX_CORRELATION_BYTES = 64
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_TOPIC_REST = re.compile(r"[^+#\x00]+\Z")


def command_topic(device_id: str, name: str, client: str | None = None) -> str:
    return topic_path(device_id, f"cmd/{name}" + (f"/{client}" if client else ""))


def split_command(relative: str) -> tuple[str, str | None]:
    """``cmd/<name>[/<client>]`` (relative to the device root) -> (name, client or None)."""
    name, _, client = relative.removeprefix("cmd/").partition("/")
    return name, (client or None)


def reply_problem(
    device_id: str, client: str | None, response_topic: str, correlation: bytes | None
) -> str | None:
    """Why a reply must not be sent to ``response_topic`` for a command from ``client`` (None: fine)."""
    if client is not None and not _CLIENT_NAME.match(client):
        return "the command topic's client name must be 1-64 letters, digits, '_', '.' or '-'"
    if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
        return f"correlation data of {len(correlation)} bytes is longer than {MAX_CORRELATION_BYTES}"
    if len(response_topic) > MAX_RESPONSE_TOPIC_CHARS:
        return f"the response topic is longer than {MAX_RESPONSE_TOPIC_CHARS} characters"
    prefix = topic_path(device_id, f"{REPLY_ROOT}/{client}/" if client else f"{REPLY_ROOT}/")
    rest = response_topic.removeprefix(prefix)
    if rest == response_topic or not _TOPIC_REST.match(rest) or (client is None and "/" not in rest):
        where = f"{prefix}<anything>" if client else f"{prefix}<client>/<anything>"
        return f"the response topic must be under {where}"
    return None
